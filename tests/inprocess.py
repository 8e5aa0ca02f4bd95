"""The runtime in-process, without a server: build it from a model folder, load it, predict."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
from mlserver.settings import ModelParameters, ModelSettings
from mlserver.types import InferenceRequest, RequestInput

from mlserver_torchflow import TorchFlowRuntime
from mlserver_torchflow.engine.replica import Replica


def runtime(uri: Path, name: str = "m", **extra: Any) -> TorchFlowRuntime:
    settings = ModelSettings(
        name=name, implementation=TorchFlowRuntime, parameters=ModelParameters(uri=str(uri), extra=extra)
    )
    return TorchFlowRuntime(settings)


def load(uri: Path, name: str = "m", **extra: Any) -> TorchFlowRuntime:
    """`name`: a model of its own in the metrics (their children are per model name)."""
    model = runtime(uri, name, **extra)
    assert asyncio.run(model.load()) is True
    return model


def first(model: TorchFlowRuntime) -> Replica:
    """The model's first (with one device, only) copy."""
    return model.copies[0]


def predict(model: TorchFlowRuntime, x: np.ndarray) -> np.ndarray:
    payload = InferenceRequest(
        inputs=[RequestInput(name="input-0", datatype="FP32", shape=list(x.shape), data=x.ravel().tolist())]
    )
    out = asyncio.run(model.predict(payload)).outputs[0]
    return np.asarray(out.data.root, dtype=np.float32).reshape(out.shape)
