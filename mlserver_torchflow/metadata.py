"""V2 model metadata: the same names and datatypes that requests must use and responses carry."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from mlserver.types import Datatype, MetadataModelResponse, MetadataTensor, Parameters

from .signature import NUMPY_TO_V2, TensorSpec
from .versions import VersionCheck

PLATFORM = "pytorch-mlflow"


def observed_outputs(named: Sequence[tuple[str, np.ndarray]]) -> tuple[TensorSpec, ...]:
    """Output specs learnt from the warm-up run, for models whose signature has no outputs."""
    return tuple(
        TensorSpec(name, NUMPY_TO_V2.get(a.dtype, "FP32"), (-1, *a.shape[1:]) if a.ndim else ())
        for name, a in named
    )


def tensors(specs: Sequence[TensorSpec] | None) -> list[MetadataTensor]:
    return [
        MetadataTensor(name=s.name, datatype=Datatype(s.datatype), shape=list(s.shape or [-1]))
        for s in specs or ()
    ]


def build_metadata(
    name: str,
    version: str | None,
    inputs: Sequence[TensorSpec] | None,
    outputs: Sequence[TensorSpec] | None,
    facts: dict[str, str],
    versions: Sequence[VersionCheck],
) -> MetadataModelResponse:
    """Flat string parameters only: MLServer's gRPC converter drops anything else."""
    params = {f"torchflow.{k}": v for k, v in facts.items()}
    for check in versions:
        state = "ok" if check.matches else "MISMATCH"
        params[f"torchflow.version.{check.package}"] = (
            f"saved {check.saved}, running {check.running or 'not installed'} ({state})"
        )
    return MetadataModelResponse(
        name=name,
        versions=[version] if version else [],
        platform=PLATFORM,
        inputs=tensors(inputs),
        outputs=tensors(outputs),
        parameters=Parameters(**params),
    )
