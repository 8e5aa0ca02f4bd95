"""Repeated load/unload in one process gives everything back: the module itself (CPU twin, and CUDA)
and, on CUDA, the allocator's bytes, both allocated and reserved."""

from __future__ import annotations

import asyncio
import gc
import weakref

import numpy as np
import pytest
import torch

from tests import builders as b
from tests.conftest import Saved
from tests.inprocess import first, load, predict

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")),
]
CYCLES = 4


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fmt", b.FORMATS)
def test_unloaded_models_are_freed_every_cycle(mlp: dict[str, Saved], fmt: str, device: str) -> None:
    def allocated() -> tuple[int, int]:
        if device != "cuda":
            return (0, 0)
        torch.cuda.synchronize()
        return torch.cuda.memory_allocated(), torch.cuda.memory_reserved()

    x = np.random.default_rng(6).random((4, 4), dtype=np.float32)
    baseline = allocated()
    for cycle in range(CYCLES):
        model = load(mlp[fmt].path, device=device)
        np.testing.assert_allclose(predict(model, x), mlp[fmt].expected(x), rtol=1e-4, atol=1e-5)
        module = weakref.ref(first(model).predictor.module)
        assert asyncio.run(model.unload()) is True
        gc.collect()
        # The runtime object may outlive its unload (MLServer holds it until its callbacks finish).
        assert module() is None, f"cycle {cycle}: the unloaded {fmt} module is still referenced"
        assert allocated() == baseline, f"cycle {cycle}: CUDA memory {allocated()} != {baseline}"
