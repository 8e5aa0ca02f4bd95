"""`devices`: one model copy per entry, each with its own thread and batcher, requests spread by load.

On CPU the copies are real (`devices: ["cpu", "cpu"]`: two modules, two executor threads); the CUDA
twin puts two copies on cuda:0, and `all` takes every visible GPU (not yet run on a GPU here).
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import threading
import weakref

import numpy as np
import pytest
import torch
from mlserver.types import InferenceRequest, RequestInput
from prometheus_client import REGISTRY

from mlserver_torchflow import TorchFlowRuntime
from mlserver_torchflow.config import load_settings
from mlserver_torchflow.engine.replica import Replica
from mlserver_torchflow.engine.replicas import labels, pick
from mlserver_torchflow.errors import ModelLoadError
from tests.conftest import Saved
from tests.inprocess import load, predict, runtime

ON_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
TWO_COPIES = [["cpu", "cpu"], pytest.param(["cuda:0", "cuda:0"], marks=ON_CUDA)]
_names = itertools.count()


def batches(model: str, device: str) -> tuple[float, float]:
    """(forward passes, rows) that one copy ran, from the torchflow_batch_rows histogram."""
    labels = {"model": model, "device": device}
    count = REGISTRY.get_sample_value("torchflow_batch_rows_count", labels) or 0.0
    return count, REGISTRY.get_sample_value("torchflow_batch_rows_sum", labels) or 0.0


def request(x: np.ndarray) -> InferenceRequest:
    return InferenceRequest(
        inputs=[RequestInput(name="input-0", datatype="FP32", shape=list(x.shape), data=x.ravel().tolist())]
    )


@pytest.mark.parametrize("devices", TWO_COPIES)
def test_concurrent_requests_use_both_copies_and_all_answers_are_right(
    mlp: dict[str, Saved], devices: list[str]
) -> None:
    name = f"two-{next(_names)}"
    model = runtime(mlp["pt2"].path, name, devices=devices, max_batch_size=8, max_batch_time=0.002)
    inputs = [np.random.default_rng(i).random((1 + i % 5, 4), dtype=np.float32) for i in range(96)]

    async def clients() -> list[np.ndarray]:
        # One event loop for load and requests: each batcher's dispatcher runs on the loop it was
        # created on, as in the server.
        assert await model.load() is True
        replies = await asyncio.gather(*(model.predict(request(x)) for x in inputs))
        copies.extend(model.copies)
        assert await model.unload() is True
        return [np.asarray(r.outputs[0].data.root, np.float32).reshape(r.outputs[0].shape) for r in replies]

    copies: list[Replica] = []
    answers = asyncio.run(clients())
    assert [c.label for c in copies] == [f"{devices[0]}#0", f"{devices[0]}#1"]
    assert copies[0].predictor.module is not copies[1].predictor.module
    assert copies[0].executor is not copies[1].executor
    for x, got in zip(inputs, answers, strict=True):
        np.testing.assert_allclose(got, mlp["pt2"].expected(x), rtol=1e-5, atol=1e-6)
    (passes0, rows0), (passes1, rows1) = (batches(name, c.label) for c in copies)
    assert passes0 > 0 and passes1 > 0, f"one copy did all the work: {passes0} and {passes1} passes"
    assert rows0 + rows1 == sum(len(x) for x in inputs)
    assert all(c.outstanding == 0 for c in copies)
    memory = REGISTRY.get_sample_value(
        "torchflow_device_memory_bytes", {"model": name, "device": copies[1].label}
    )
    assert memory is not None and memory > 0
    asyncio.run(model.unload())


@pytest.mark.parametrize("devices", TWO_COPIES)
def test_unload_frees_every_copy_and_thread(mlp: dict[str, Saved], devices: list[str]) -> None:
    name = f"free-{next(_names)}"
    model = load(mlp["pickle"].path, name, devices=devices)
    x = np.ones((3, 4), np.float32)
    np.testing.assert_allclose(predict(model, x), mlp["pickle"].expected(x), rtol=1e-5, atol=1e-6)
    copies = model.copies
    modules = [weakref.ref(c.predictor.module) for c in copies]
    # A staging device's copy finishes its passes on a second thread (engine/transfers.py).
    assert [c.collector is not None for c in copies] == [d.startswith("cuda") for d in devices]
    executors = [c.executor for c in copies] + [c.collector for c in copies if c.collector]
    del copies
    assert asyncio.run(model.unload()) is True
    gc.collect()
    assert [m() for m in modules] == [None, None]
    for executor in executors:  # shut down: it takes no more work
        with pytest.raises(RuntimeError, match="shutdown"):
            executor.submit(int)
    assert not [t.name for t in threading.enumerate() if t.name.startswith(f"torchflow-{name}-")]


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU host: checks the error; the CUDA twin is below")
def test_all_without_cuda_is_a_clear_error(mlp: dict[str, Saved]) -> None:
    with pytest.raises(ModelLoadError, match="devices `all` was requested but no CUDA device is visible"):
        load(mlp["pt2"].path, devices="all")


@ON_CUDA
def test_all_is_one_copy_per_visible_gpu(mlp: dict[str, Saved]) -> None:
    model = load(mlp["pt2"].path, f"all-{next(_names)}", devices="all")
    assert [str(c.device) for c in model.copies] == [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    asyncio.run(model.unload())


def test_least_outstanding_rows_wins_and_ties_rotate() -> None:
    assert pick([5, 0, 3], start=0) == 1
    assert pick([2, 2, 2], start=0) == 0
    assert pick([2, 2, 2], start=2) == 2
    assert pick([4, 1, 1], start=0) == 1
    assert pick([1, 4, 1], start=1) == 2  # the tie after `start`, not the lowest index


def test_labels_tell_copies_on_one_device_apart() -> None:
    cpu, gpu0, gpu1 = torch.device("cpu"), torch.device("cuda", 0), torch.device("cuda", 1)
    assert labels([cpu]) == ["cpu"]
    assert labels([gpu0, gpu1]) == ["cuda:0", "cuda:1"]
    assert labels([cpu, gpu0, cpu]) == ["cpu#0", "cuda:0", "cpu#1"]


def test_device_and_devices_together_are_refused(mlp: dict[str, Saved]) -> None:
    with pytest.raises(ModelLoadError, match=r"both device \('cpu'\) and devices \(\['cpu', 'cpu'\]\)"):
        load(mlp["pt2"].path, device="cpu", devices=["cpu", "cpu"])


def test_devices_in_extra_wins_over_a_device_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU runtime manifest sets MLSERVER_MODEL_TORCHFLOW_DEVICE=cpu for every model."""
    monkeypatch.setenv("MLSERVER_MODEL_TORCHFLOW_DEVICE", "cpu")
    settings = load_settings({"devices": ["cpu", 1]})
    assert (settings.device, settings.devices) == (None, ("cpu", "cuda:1"))
    monkeypatch.setenv("MLSERVER_MODEL_TORCHFLOW_DEVICES", "0,1")
    with pytest.raises(ModelLoadError, match="both device"):
        load_settings({})


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [
        ("all", ("all",)),
        ("0,1", ("cuda:0", "cuda:1")),
        ('["cpu", "cpu"]', ("cpu", "cpu")),
        ([2], ("cuda:2",)),
    ],
)
def test_devices_forms(raw: object, parsed: tuple[str, ...]) -> None:
    assert load_settings({"devices": raw}).devices == parsed


@pytest.mark.parametrize("raw", [[], ["all", "cpu"], ["auto"], [True], "cuda:x"])
def test_bad_devices_name_the_key(raw: object) -> None:
    with pytest.raises(ModelLoadError, match="devices"):
        load_settings({"devices": raw})


def test_runtime_class_is_unchanged_for_one_device(mlp: dict[str, Saved]) -> None:
    """A single device is a set of one copy: the label stays `cpu`, as before multi-device support."""
    model = load(mlp["pt2"].path, f"one-{next(_names)}", device="cpu")
    assert isinstance(model, TorchFlowRuntime)
    assert [c.label for c in model.copies] == ["cpu"]
    asyncio.run(model.unload())
