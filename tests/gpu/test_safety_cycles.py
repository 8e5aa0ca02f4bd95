"""Repeated load/unload in one process gives everything back: the module itself (CPU twin, and CUDA)
and, on CUDA, the allocator's bytes: from the second cycle on, what the first left (tests/gpu/memory.py
clears the caches that legitimately stay, such as cuBLAS's per-thread workspaces)."""

from __future__ import annotations

import asyncio
import gc
import weakref

import numpy as np
import pytest
import torch

from tests import builders as b
from tests.conftest import Saved
from tests.gpu.memory import device_bytes
from tests.inprocess import first, load, predict

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")),
]
CYCLES = 4


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fmt", b.FORMATS)
def test_unloaded_models_are_freed_every_cycle(mlp: dict[str, Saved], fmt: str, device: str) -> None:
    x = np.random.default_rng(6).random((4, 4), dtype=np.float32)
    baseline = (-1, -1)
    for cycle in range(CYCLES):
        model = load(mlp[fmt].path, device=device)
        np.testing.assert_allclose(predict(model, x), mlp[fmt].expected(x), rtol=1e-4, atol=1e-5)
        module = weakref.ref(first(model).predictor.module)
        assert asyncio.run(model.unload()) is True
        gc.collect()
        # The runtime object may outlive its unload (MLServer holds it until its callbacks finish).
        assert module() is None, f"cycle {cycle}: the unloaded {fmt} module is still referenced"
        if cycle == 0:  # the first cycle creates what stays for the process (CUDA context, handles)
            baseline = device_bytes(device)
            continue
        now = device_bytes(device)
        assert now[0] == baseline[0], f"cycle {cycle}: {now[0]} bytes allocated, {baseline[0]} after cycle 0"
        assert now[1] <= baseline[1], f"cycle {cycle}: {now[1]} bytes reserved, {baseline[1]} after cycle 0"
