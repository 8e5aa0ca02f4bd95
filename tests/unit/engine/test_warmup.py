"""Which batch sizes a compiled model is warmed at, and the inputs built for them; the compile settings;
the timed passes that seed the batcher's cost model."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from mlserver_torchflow.common import Named
from mlserver_torchflow.config import BatchConfig, load_settings
from mlserver_torchflow.engine.batching import Batcher
from mlserver_torchflow.engine.merging import batch_key
from mlserver_torchflow.engine.warmup import batch_sizes, calibrate, inputs_of
from mlserver_torchflow.errors import ModelLoadError
from mlserver_torchflow.protocol.signature import Interface, TensorSpec
from mlserver_torchflow.serving.metrics import BatchMetrics


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


def test_timed_passes_tell_the_batcher_the_fixed_and_per_row_cost() -> None:
    """A device that sleeps 4 ms + 1 ms a row (GIL released, as a GPU's host thread waits): warm-up's
    passes at 1 and 8 rows give the batcher that split, and 'off our cores', before any request."""
    fixed, per_row = 4e-3, 1e-3
    seen: list[int] = []

    def run(arrays: list[np.ndarray]) -> Named:
        seen.append(arrays[0].shape[0])
        time.sleep(fixed + per_row * arrays[0].shape[0])
        return [("output-0", arrays[0])]

    async def main() -> tuple[float, float, bool]:
        example = [np.zeros((1, 4), np.float32)]
        interface = Interface(None, None)
        with ThreadPoolExecutor(max_workers=1) as executor:
            key, samples = await calibrate(run, executor, 64, example, interface)
            assert key == batch_key(example) and [s[0] for s in samples] == [1, 1, 1, 8, 8, 8]
            config = BatchConfig(max_batch_size=64, max_batch_time=0.01)
            batcher = Batcher(run, executor, config, BatchMetrics("t-calibrate", "cpu"))
            batcher.calibrate(key, samples)
            fit = batcher._passes.cost(key).fit()
            on_core = batcher.core.on_core
            await batcher.close()
        return (*fit, on_core)

    got_fixed, got_per_row, on_core = asyncio.run(main())
    assert seen == [1, 1, 1, 1, 8, 8, 8, 8]  # one untimed pass before each size's timed ones
    assert got_fixed == pytest.approx(fixed, abs=1.5e-3) and got_per_row == pytest.approx(per_row, abs=0.3e-3)
    assert not on_core


def test_no_timed_passes_without_a_row_shape() -> None:
    async def main() -> tuple[object, list[tuple[int, float, float]]]:
        with ThreadPoolExecutor(max_workers=1) as executor:
            interface = Interface((TensorSpec("x", "FP32", (-1, -1)),), None)  # a free trailing dimension
            return await calibrate(lambda a: [], executor, 64, None, interface)

    assert asyncio.run(main()) == (None, [])
