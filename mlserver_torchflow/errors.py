"""Every error the runtime raises: MLServer turns `status_code` into the REST status and gRPC code."""

from __future__ import annotations

from mlserver.errors import MLServerError


class TorchFlowError(MLServerError):
    """Base class; the message is what the client or operator reads, so it says what to do."""

    status_code_default = 500

    def __init__(self, msg: str) -> None:
        super().__init__(msg, status_code=self.status_code_default)


class InvalidInput(TorchFlowError):
    """The request does not match the model's interface (400, `INVALID_ARGUMENT` over gRPC)."""

    status_code_default = 400


class ModelLoadError(TorchFlowError):
    """The model cannot be found, read, placed or warmed up; raised from `load()`."""


class ModelNotFoundOnDisk(ModelLoadError):
    """No weights file where the MLmodel, the storage-initializer or the tree could put it."""


class ModelExecutionError(TorchFlowError):
    """The model itself raised on a valid request: one line for the client, the traceback in the log."""


class QueueFull(TorchFlowError):
    """Back-pressure: the batch queue holds `max_queue_rows` already (503, `UNAVAILABLE`)."""

    status_code_default = 503


class QueueTimeout(TorchFlowError):
    """The request waited past `queue_timeout` and was not run (503, `UNAVAILABLE`)."""

    status_code_default = 503


class RequestTooLarge(TorchFlowError):
    """More rows than the queue or the device can ever take (413, `RESOURCE_EXHAUSTED`)."""

    status_code_default = 413
