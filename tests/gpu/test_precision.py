"""Reduced precision, `cast` and `autocast`, against the fp32 model: within the tolerance docs/gpu.md states,
with the interface's datatypes kept. Each runs on CPU (bfloat16 and float16 both work there in
torch 2.13) and on CUDA when present (not yet run on a GPU in this repository)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
from mlserver.types import InferenceRequest, RequestInput

from mlserver_torchflow.errors import ModelLoadError
from tests.conftest import Saved
from tests.inprocess import first, load, predict

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")),
]
# The tolerance docs/gpu.md states against fp32, as |got - fp32| <= atol + rtol * |fp32|.
TOLERANCE = {"bfloat16": (2e-2, 2e-2), "float16": (2e-3, 2e-3)}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("precision", ["cast", "autocast"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("fmt", ["pickle", "pt2", "torchscript"])
def test_within_tolerance_of_fp32(
    mlp: dict[str, Saved], fmt: str, dtype: str, precision: str, device: str
) -> None:
    model = load(mlp[fmt].path, device=device, dtype=dtype, precision=precision)
    weights = {p.dtype for p in first(model).predictor.module.parameters()}
    assert weights == {getattr(torch, dtype) if precision == "cast" else torch.float32}
    x = np.random.default_rng(3).standard_normal((64, 4)).astype(np.float32)
    got, expected = predict(model, x), mlp[fmt].expected(x)
    assert got.dtype == np.float32  # the signature's FP32, whatever the compute precision
    rtol, atol = TOLERANCE[dtype]
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol)
    assert not np.array_equal(got, expected), "the output is bit-identical to fp32: nothing ran reduced"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("precision", ["cast", "autocast"])
def test_without_a_signature_results_come_back_as_fp32(
    no_signature: Saved, device: str, precision: str
) -> None:
    """The user chose float16 for speed, not for a new interface: FP32 in, FP32 out."""
    model = load(no_signature.path, device=device, dtype="float16", precision=precision)
    x = np.random.default_rng(4).random((5, 4), dtype=np.float32)
    request = InferenceRequest(
        inputs=[RequestInput(name="x", datatype="FP32", shape=[5, 4], data=x.ravel().tolist())]
    )
    out = asyncio.run(model.predict(request)).outputs[0]
    assert out.datatype == "FP32"
    got = np.asarray(out.data.root, dtype=np.float32).reshape(out.shape)
    np.testing.assert_allclose(got, no_signature.expected(x), rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("device", DEVICES)
def test_autocast_needs_a_reduced_dtype(mlp: dict[str, Saved], device: str) -> None:
    with pytest.raises(
        ModelLoadError, match="precision `autocast` needs dtype float16 or bfloat16, got dtype `keep`"
    ):
        load(mlp["pt2"].path, device=device, precision="autocast")
