"""A pt2 program's shape rules as 400s: fixed dimensions, sizes shared between inputs, ranges."""

from __future__ import annotations

import pytest

from mlserver_torchflow.errors import InvalidInput
from mlserver_torchflow.protocol.shapes import Dim, ShapeRules

S0 = Dim(symbol="s0")
SHARED = ShapeRules(((S0, Dim(size=4)), (S0, Dim(size=2))), {"s0": (2, None)})


def test_shared_batch_dimension_names_both_inputs_and_the_rule() -> None:
    SHARED.check(["features", "extra"], [(3, 4), (3, 2)])
    SHARED.check(["features", "extra"], [(1, 4), (1, 2)])  # torch records 2 as the minimum, takes 1
    with pytest.raises(InvalidInput) as err:
        SHARED.check(["features", "extra"], [(3, 4), (2, 2)])
    text = str(err.value)
    assert "inputs 'features' and 'extra'" in text and "(3)" in text and "(2)" in text, text
    assert "must be equal" in text and err.value.status_code == 400


def test_a_fixed_batch_of_one_says_why_and_what_to_do() -> None:
    one = ShapeRules(((Dim(size=1), Dim(size=4)),))
    one.check(["input-0"], [(1, 4)])
    with pytest.raises(
        InvalidInput, match=r"dimension 0 must be 1, got 2.*one-row input example.*two or more"
    ):
        one.check(["input-0"], [(2, 4)])
    with pytest.raises(InvalidInput, match=r"dimension 1 must be 4, got 5") as err:
        one.check(["input-0"], [(1, 5)])
    assert "one-row" not in str(err.value)
    assert one.max_rows() == 1


def test_ranges_bound_requests_and_batches() -> None:
    ranged = ShapeRules(((Dim(symbol="b"), Dim(size=4)),), {"b": (4, 8)})
    ranged.check(["x"], [(4, 4)])
    ranged.check(["x"], [(8, 4)])
    for rows in (3, 9):
        with pytest.raises(InvalidInput, match=rf"dimension 0 is {rows}; .* takes 4 to 8 there"):
            ranged.check(["x"], [(rows, 4)])
    assert ranged.max_rows() == 8
    assert SHARED.max_rows() is None  # unbounded: the batcher's own max_batch_size applies


def test_a_batch_size_shared_with_another_dimension_is_never_merged() -> None:
    """Concatenating rows would change dim 0 but not the dimension it must equal."""
    square = ShapeRules(((Dim(symbol="n"), Dim(symbol="n")),))
    square.check(["m"], [(3, 3)])
    with pytest.raises(InvalidInput, match="must be equal"):
        square.check(["m"], [(3, 4)])
    assert square.max_rows() == 1


def test_a_wrong_rank_and_the_description() -> None:
    with pytest.raises(InvalidInput, match=r"expected 2 dimensions \(\[s0, 4\]\), got shape \[3\]"):
        SHARED.check(["features", "extra"], [(3,), (3, 2)])
    assert SHARED.describe(["features", "extra"]) == "features [s0, 4], extra [s0, 2]; s0 >= 1"
    ranged = ShapeRules(((Dim(symbol="b"),),), {"b": (4, 8)})
    assert ranged.describe(["x"]) == "x [b]; b in [4, 8]"
