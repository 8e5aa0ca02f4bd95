"""Per-device memory and utilisation metrics. On CPU only the resident-memory gauge has a sample; the
CUDA allocator's and NVML's gauges are omitted, never reported as 0. The CUDA twin (not yet run on a
GPU here) checks allocated <= reserved, and utilisation present exactly when NVML answers."""

from __future__ import annotations

import asyncio
import importlib.util
import itertools

import numpy as np
import pytest
import torch
from prometheus_client import REGISTRY

from mlserver_torchflow.engine.device import device_stats
from tests.conftest import Saved
from tests.inprocess import load, predict

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")),
]
_names = itertools.count()


def sample(metric: str, model: str, device: str) -> float | None:
    return REGISTRY.get_sample_value(metric, {"model": model, "device": device})


@pytest.mark.parametrize("device", DEVICES)
def test_memory_gauges_per_device(mlp: dict[str, Saved], device: str) -> None:
    name = f"mem-{next(_names)}"
    model = load(mlp["pt2"].path, name, device=device)
    label = "cpu" if device == "cpu" else "cuda:0"
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(predict(model, x), mlp["pt2"].expected(x), rtol=1e-5, atol=1e-6)
    in_use = sample("torchflow_device_memory_bytes", name, label)
    allocated = sample("torchflow_device_memory_allocated_bytes", name, label)
    reserved = sample("torchflow_device_memory_reserved_bytes", name, label)
    utilization = sample("torchflow_device_utilization_percent", name, label)
    assert in_use is not None and in_use > 0
    if device == "cpu":
        assert (allocated, reserved, utilization) == (None, None, None)
    else:
        assert allocated is not None and reserved is not None and 0 < allocated <= reserved
        nvml = importlib.util.find_spec("pynvml") is not None
        assert (utilization is not None) == nvml
    asyncio.run(model.unload())


@pytest.mark.parametrize("device", DEVICES)
def test_device_stats_say_what_the_device_can_report(device: str) -> None:
    stats = device_stats(torch.device(device))
    assert stats.in_use > 0 or device == "cuda"
    if device == "cpu":
        assert (stats.allocated, stats.reserved, stats.utilization) == (None, None, None)
    else:
        assert stats.allocated is not None and stats.reserved is not None
        assert stats.allocated <= stats.reserved
