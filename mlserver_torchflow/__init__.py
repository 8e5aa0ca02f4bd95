"""MLServer runtime for MLflow PyTorch models: `mlserver_torchflow.TorchFlowRuntime`."""

from .runtime import TorchFlowRuntime

__all__ = ["TorchFlowRuntime"]
__version__ = "0.1.0"
