"""Device placement, precision and memory release. Each test runs on CPU (the twin CI runs) and on
CUDA when present; no GPU was lent while this was written, so the CUDA cases have run only where
`nvidia-smi` works (see docs/kserve.md, GPU notes)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from mlserver_torchflow.engine.device import is_out_of_memory, resolve_device
from mlserver_torchflow.engine.replicas import labels
from tests import builders as b
from tests.conftest import Saved
from tests.gpu.memory import device_bytes
from tests.inprocess import first, load, predict

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fmt", b.FORMATS)
def test_loads_onto_the_device_and_matches_the_reference(
    mlp: dict[str, Saved], fmt: str, device: str
) -> None:
    model = load(mlp[fmt].path, device=device)
    weight = next(p for p in first(model).predictor.module.parameters())
    assert weight.device.type == device
    x = np.random.default_rng(0).random((16, 4), dtype=np.float32)
    np.testing.assert_allclose(predict(model, x), mlp[fmt].expected(x), rtol=1e-4, atol=1e-5)
    asyncio.run(model.unload())  # nothing left loaded to shift a later test's memory baseline


@pytest.mark.parametrize("device", DEVICES)
def test_a_conv_net_in_channels_last_with_the_math_settings_matches_the_reference(
    conv: Saved, device: str
) -> None:
    """The device settings through the runtime: weights channels-last, cuDNN's autotuner on, TF32 off
    (full FP32, so the reference's tolerance holds); the answers are the saved model's."""
    saved = torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32
    try:
        model = load(conv.path, device=device, channels_last=True, cudnn_benchmark=True, tf32="off")
        module = first(model).predictor.module
        assert module.conv.weight.is_contiguous(memory_format=torch.channels_last)
        if device == "cuda":
            assert torch.backends.cudnn.benchmark is True
            assert torch.backends.cuda.matmul.allow_tf32 is False
        image = np.random.default_rng(1).random((5, 3, 8, 8), dtype=np.float32)
        np.testing.assert_allclose(predict(model, image), conv.expected(image), rtol=1e-4, atol=1e-5)
        asyncio.run(model.unload())
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize("device", DEVICES)
def test_auto_picks_cuda_when_present(mlp: dict[str, Saved], device: str) -> None:
    model = load(mlp["pt2"].path, device="auto")
    assert first(model).device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    asyncio.run(model.unload())  # nothing left loaded to shift a later test's memory baseline


def test_auto_and_cuda_name_one_indexed_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """`auto` on a GPU host is `cuda:0`, like an explicit `cuda`: one metrics label, one current device.
    No GPU exists here: `torch.cuda` says there is one (a mock, for what cannot exist on CI)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert str(resolve_device("auto")) == str(resolve_device("cuda")) == "cuda:0"
    assert labels([resolve_device("auto"), resolve_device("cuda")]) == ["cuda:0#0", "cuda:0#1"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_weights_are_cast(mlp: dict[str, Saved], device: str, dtype: str) -> None:
    model = load(mlp["pickle"].path, device=device, dtype=dtype)
    assert {p.dtype for p in first(model).predictor.module.parameters()} == {getattr(torch, dtype)}
    assert first(model).predictor.float_dtype == getattr(torch, dtype)
    asyncio.run(model.unload())  # nothing left loaded to shift a later test's memory baseline


@pytest.mark.parametrize("device", DEVICES)
def test_unload_returns_device_memory(mlp: dict[str, Saved], device: str) -> None:
    asyncio.run(load(mlp["pt2"].path, device=device).unload())  # what stays for the process stays
    baseline = device_bytes(device)[0]
    model = load(mlp["pt2"].path, device=device)
    assert device_bytes(device)[0] > baseline or device == "cpu"
    assert asyncio.run(model.unload()) is True
    assert model.copies == ()
    assert device_bytes(device)[0] == baseline


@pytest.mark.parametrize(
    ("err", "oom"),
    [
        (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
        (RuntimeError("CUDA error: out of memory\nCompile with TORCH_USE_CUDA_DSA"), True),  # a graph capture
        (RuntimeError("cudaErrorMemoryAllocation: instantiating the graph"), True),
        (
            RuntimeError("[enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: can't allocate memory"),
            True,
        ),
        (RuntimeError("CUDA error: an illegal memory access was encountered"), False),
        (ValueError("out of memory"), False),
    ],
)
def test_every_form_of_out_of_memory_halves_the_batch(err: BaseException, oom: bool) -> None:
    assert is_out_of_memory(err) is oom
