"""Which batch sizes a compiled model is warmed at, and the inputs built for them; the compile settings."""

from __future__ import annotations

import numpy as np
import pytest

from mlserver_torchflow.config import BatchConfig, load_settings
from mlserver_torchflow.engine.warmup import batch_sizes, inputs_of
from mlserver_torchflow.errors import ModelLoadError
from mlserver_torchflow.protocol.signature import Interface, TensorSpec


@pytest.mark.parametrize(
    ("max_batch_size", "preferred", "sizes"),
    [
        (16, (4, 8), (4, 8, 16)),  # padded batches: only the preferred sizes and the cap occur
        (8, (8,), (8,)),
        (16, (), (1, 2, 16)),  # any row count: one row is its own graph, a second size goes dynamic
        (0, (4, 8), (1, 2, 4, 8)),  # no batcher, so nothing pads to the preferred sizes
        (0, (), (1, 2)),
    ],
)
def test_batch_sizes(max_batch_size: int, preferred: tuple[int, ...], sizes: tuple[int, ...]) -> None:
    config = BatchConfig(max_batch_size=max_batch_size, max_batch_time=0.0, preferred_batch_sizes=preferred)
    assert batch_sizes(config) == sizes


def test_inputs_repeat_the_example_rows() -> None:
    example = [np.arange(8, dtype=np.float32).reshape(2, 4), np.array([[3], [7]], dtype=np.int64)]
    spec = (TensorSpec("a", "FP32", (-1, 4)), TensorSpec("b", "INT64", (-1, 1)))
    got = inputs_of(5, example, Interface(spec, None))
    assert got is not None
    assert [a.shape for a in got] == [(5, 4), (5, 1)]
    assert [a.dtype for a in got] == [np.float32, np.int64]
    assert got[1].ravel().tolist() == [3, 7, 3, 7, 3]  # real rows (valid ids), not zeros


def test_inputs_from_the_signature_alone() -> None:
    specs = (TensorSpec("image", "FP32", (-1, 3, 8, 8)), TensorSpec("ids", "INT64", (-1, 5)))
    got = inputs_of(3, None, Interface(specs, None))
    assert got is not None
    assert [(a.shape, a.dtype) for a in got] == [((3, 3, 8, 8), np.float32), ((3, 5), np.int64)]
    columns = (TensorSpec("a", "FP64", (-1,)), TensorSpec("b", "INT32", (-1,)))
    (table,) = inputs_of(2, None, Interface(columns, None, columns=True)) or []
    assert (table.shape, table.dtype) == ((2, 2), np.float64)


@pytest.mark.parametrize(
    "interface",
    [
        Interface(None, None),  # no signature and no example
        Interface((TensorSpec("x", "FP32", (-1, -1)),), None),  # a free trailing dimension
        Interface((TensorSpec("x", "FP32", (1, 4)),), None),  # a fixed batch dimension
    ],
)
def test_no_inputs_when_a_row_is_unknown(interface: Interface) -> None:
    assert inputs_of(4, None, interface) is None


def test_a_fixed_batch_dimension_is_never_resized() -> None:
    example = [np.ones((1, 4), np.float32)]
    assert inputs_of(4, example, Interface((TensorSpec("x", "FP32", (1, 4)),), None)) is None


def test_compile_mode_needs_inductor() -> None:
    with pytest.raises(ModelLoadError, match="compile_mode 'reduce-overhead' is an inductor mode"):
        load_settings({"compile": True, "compile_mode": "reduce-overhead", "compile_backend": "eager"})
    settings = load_settings({"compile": True, "compile_mode": "max-autotune"})
    assert (settings.compile_backend, settings.compile_mode) == ("inductor", "max-autotune")


def test_unknown_compile_mode_is_named() -> None:
    with pytest.raises(ModelLoadError, match="compile_mode"):
        load_settings({"compile": True, "compile_mode": "fast"})
