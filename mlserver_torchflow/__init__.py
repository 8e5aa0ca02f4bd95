"""MLServer runtime for MLflow PyTorch models: `mlserver_torchflow.TorchFlowRuntime`.

The layers, each importing only those below it (tests/unit/test_layers.py checks):
`serving` (the MLServer class, logs, metrics) -> `engine` (files, formats, devices, batching) ->
`protocol` (V2 <-> numpy arrays, no torch) -> `patches` (every third-party internal we touch) ->
`config`, `errors`, `common`. The runtime class is imported on first use, so that importing a lower
layer (the protocol, say) does not import torch or MLServer's server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .serving.runtime import TorchFlowRuntime

__all__ = ["TorchFlowRuntime"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "TorchFlowRuntime":
        from .serving.runtime import TorchFlowRuntime

        return TorchFlowRuntime
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
