"""V2 model metadata: the same names and datatypes that requests must use and responses carry."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mlserver.types import Datatype, MetadataModelResponse, MetadataTensor, Parameters

from ..common import Named
from .signature import NUMPY_TO_V2, TensorSpec

PLATFORM = "pytorch-mlflow"


def observed_outputs(named: Named) -> tuple[TensorSpec, ...]:
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
    facts: Mapping[str, str],
) -> MetadataModelResponse:
    """`facts` become `torchflow.<key>` parameters: flat strings only, as MLServer's gRPC converter
    drops anything else."""
    params = {f"torchflow.{k}": v for k, v in facts.items()}
    return MetadataModelResponse(
        name=name,
        versions=[version] if version else [],
        platform=PLATFORM,
        inputs=tensors(inputs),
        outputs=tensors(outputs),
        parameters=Parameters(**params),
    )


def triton_config(
    name: str,
    inputs: Sequence[TensorSpec] | None,
    outputs: Sequence[TensorSpec] | None,
    max_batch_size: int,
    preferred: Sequence[int],
    max_delay_s: float,
) -> dict[str, Any]:
    """Triton's model config (`GET /v2/models/<name>/config`), which perf_analyzer and tritonclient read.

    With batching on, `max_batch_size` is the batcher's row cap and `dims` leave out the batch
    dimension, as Triton does; with it off, `max_batch_size` is 0 and `dims` are the full shape.
    """
    batched = max_batch_size > 1 and all(
        s.shape and s.shape[0] == -1 for s in (*(inputs or ()), *(outputs or ()))
    )

    def entries(specs: Sequence[TensorSpec] | None) -> list[dict[str, Any]]:
        return [
            {
                "name": s.name,
                "data_type": f"TYPE_{s.datatype}",
                "dims": list((s.shape or (-1,))[1 if batched else 0 :]),
            }
            for s in specs or ()
        ]

    config: dict[str, Any] = {
        "name": name,
        "platform": "pytorch_libtorch",
        "backend": "mlserver_torchflow",
        "max_batch_size": max_batch_size if batched else 0,
        "input": entries(inputs),
        "output": entries(outputs),
    }
    if batched:
        config["dynamic_batching"] = {
            "preferred_batch_size": list(preferred),
            "max_queue_delay_microseconds": int(max_delay_s * 1_000_000),
        }
    return config
