"""A pt2 program's guards, read at load and enforced per request: real programs, real MLflow models.

Before, a request that broke a guard reached the model and came back as a 500 (`AssertionError: Guard
failed`); now it is a 400 that names the inputs and the rule, and the batcher never merges requests
into a batch the program would refuse.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from mlserver.types import InferenceRequest, RequestInput

from mlserver_torchflow.engine.guards import rules_of
from mlserver_torchflow.errors import InvalidInput
from tests import builders as b
from tests.conftest import Saved
from tests.inprocess import load, predict


def request(**arrays: np.ndarray) -> InferenceRequest:
    return InferenceRequest(
        inputs=[
            RequestInput(name=n, datatype="FP32", shape=list(a.shape), data=a.ravel().tolist())
            for n, a in arrays.items()
        ]
    )


def test_two_inputs_with_different_row_counts_are_a_400_naming_both(two_inputs: dict[str, Saved]) -> None:
    model = load(two_inputs["pt2"].path, name="guards-two")
    rng = np.random.default_rng(3)
    features, extra = rng.random((3, 4), dtype=np.float32), rng.random((2, 2), dtype=np.float32)
    with pytest.raises(InvalidInput) as err:
        asyncio.run(model.predict(request(features=features, extra=extra)))
    text = str(err.value)
    assert err.value.status_code == 400 and "inputs 'features' and 'extra'" in text, text
    assert "must be equal" in text and "Guard failed" not in text, text
    reply = asyncio.run(model.predict(request(features=features, extra=extra[:1].repeat(3, 0))))
    got = np.asarray(reply.outputs[0].data.root, np.float32).reshape(reply.outputs[0].shape)
    np.testing.assert_allclose(got, two_inputs["pt2"].expected(features, extra[:1].repeat(3, 0)), rtol=1e-5)
    shapes = asyncio.run(model.metadata()).parameters.model_dump()["torchflow.shapes"]
    assert shapes.startswith("features [s") and ", extra [s" in shapes and ">= 1" in shapes, shapes


def test_a_pt2_exported_from_one_row_takes_one_row_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mlserver.torchflow")  # as MLServer sets it (INFO)
    model_ = b.build(b.MLP)
    path = b.save(model_, tmp_path / "one-row", "pt2", b.example_for(b.MLP, rows=1))
    served = load(path, name="guards-one-row", max_batch_size=8, max_batch_time=0.01)
    assert any("takes one row per request" in r.getMessage() for r in caplog.records)
    x = np.random.default_rng(5).random((1, 4), dtype=np.float32)
    np.testing.assert_allclose(predict(served, x), b.reference(model_, x), rtol=1e-5, atol=1e-6)
    with pytest.raises(InvalidInput, match=r"dimension 0 must be 1, got 2.*one-row input example"):
        predict(served, np.ones((2, 4), np.float32))
    assert asyncio.run(served.metadata()).parameters.model_dump()["torchflow.shapes"] == "input-0 [1, 4]"
    assert [c.batcher.config.max_batch_size for c in served.copies] == [1]  # never merged

    async def concurrent() -> list[np.ndarray]:
        rows = [np.random.default_rng(s).random((1, 4), dtype=np.float32) for s in range(12)]
        replies = await asyncio.gather(*(served.predict(request(**{"input-0": r})) for r in rows))
        return [
            np.asarray(p.outputs[0].data.root, np.float32) - b.reference(model_, r).ravel()
            for p, r in zip(replies, rows, strict=True)
        ]

    assert all(np.abs(d).max() < 1e-5 for d in asyncio.run(concurrent()))


def test_a_range_from_torch_export_caps_the_batch() -> None:
    """A program exported with an explicit Dim range: both bounds are read."""
    batch = torch.export.Dim("batch", min=4, max=8)
    program = torch.export.export(b.build(b.MLP), (torch.zeros(4, 4),), dynamic_shapes=({0: batch},))
    rules = rules_of(program)
    assert rules is not None and rules.max_rows() == 8
    rules.check(["x"], [(8, 4)])
    with pytest.raises(InvalidInput, match=r"dimension 0 is 9; .* takes 4 to 8 there"):
        rules.check(["x"], [(9, 4)])
    with pytest.raises(InvalidInput, match=r"dimension 0 is 3; .* takes 4 to 8 there"):
        rules.check(["x"], [(3, 4)])
