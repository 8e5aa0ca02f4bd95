"""V2 model metadata: the same names and datatypes that requests must use and responses carry."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mlserver.types import Datatype, MetadataModelResponse, MetadataTensor, Parameters

from ..common import Named
from ..config import BatchConfig, LevelPolicy
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
    queue: Mapping[str, Any] | None = None,
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
            **(queue or {}),
        }
    return config


def triton_queue_policy(batch: BatchConfig, priority_levels: int) -> dict[str, Any]:
    """`dynamic_batching`'s queue fields in Triton's JSON: the levels' policies as the batcher applies them."""

    def policy(level: LevelPolicy) -> dict[str, Any]:
        return {
            "timeout_action": "DELAY" if level.delay else "REJECT",
            "default_timeout_microseconds": int(level.default_timeout * 1_000_000),
            "allow_timeout_override": level.allow_timeout_override,
            "max_queue_size": level.max_queue_size,
        }

    if not priority_levels:
        return {"default_queue_policy": policy(batch.levels[0])}
    return {
        "priority_levels": priority_levels,
        "default_priority_level": batch.default_level,
        "default_queue_policy": policy(batch.levels[batch.default_level - 1]),
        "priority_queue_policy": {str(k): policy(p) for k, p in enumerate(batch.levels, start=1)},
    }
