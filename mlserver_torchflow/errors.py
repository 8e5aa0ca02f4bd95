"""Every error the runtime raises, with the status a client sees over REST and gRPC.

MLServer answers an `MLServerError` with `{"error": "<message>"}` and its `status_code` over REST, and
maps that status to a gRPC code (`patches.grpc_status` adds the codes MLServer lacks). A client
handles three kinds, so there is one base for each, and catching the base is enough:

    TorchFlowError                 500  INTERNAL            (base of everything below)
    ├── BadRequest                 400  INVALID_ARGUMENT    the client must change the request
    │   ├── InvalidInput                                    it does not match the model's interface
    │   ├── NotTorchFlow           404  NOT_FOUND           a Triton extension asked of another runtime's model
    │   └── Forbidden              403  PERMISSION_DENIED   a restricted API without its header
    ├── TooLarge                   413  RESOURCE_EXHAUSTED  the client must send less per request
    │   ├── RequestTooLarge                                 more rows/values than a limit or the device
    │   └── BodyTooLarge                                    a REST body over the server's body cap
    ├── Retryable                  503  UNAVAILABLE         the same request may succeed later
    │   ├── QueueFull                                       back-pressure: the queue is full
    │   ├── QueueTimeout                                    it waited past queue_timeout, unrun
    │   ├── Unloading                                       the model is being unloaded
    │   └── ExecutionTimeout                                a pass ran past execution_timeout (or one still runs)
    ├── ModelExecutionError        500  INTERNAL            the model raised on a valid request
    └── ModelLoadError             500  (load time)         the model cannot be found, read or placed
        ├── ModelNotFoundOnDisk                             no weights where any layout could put them
        ├── DamagedWeights                                  a weights file fails its CRC-32 check
        └── ModelFetchError                                 a remote model URI could not be resolved or downloaded

Messages say what was expected, what came, and what to do: they are what the client or operator reads.
"""

from __future__ import annotations

from mlserver.errors import MLServerError


class TorchFlowError(MLServerError):
    """Base class. `status_code` is the REST status; `grpc_code` the name of the gRPC status code."""

    status_code_default = 500
    grpc_code = "INTERNAL"

    def __init__(self, msg: str) -> None:
        super().__init__(msg, status_code=self.status_code_default)


class BadRequest(TorchFlowError):
    """The request is wrong as sent; retrying it unchanged fails again."""

    status_code_default = 400
    grpc_code = "INVALID_ARGUMENT"


class InvalidInput(BadRequest):
    """The request does not match the model's interface (names, datatypes, shapes, data)."""


class NotTorchFlow(BadRequest):
    """Triton's config or statistics asked of a model that another runtime serves."""

    status_code_default = 404
    grpc_code = "NOT_FOUND"


class Forbidden(BadRequest):
    """An API the operator restricted (`MLSERVER_TORCHFLOW_RESTRICTED_APIS`), called without its header."""

    status_code_default = 403
    grpc_code = "PERMISSION_DENIED"


class TooLarge(TorchFlowError):
    """The request is over a size limit; split it into smaller ones."""

    status_code_default = 413
    grpc_code = "RESOURCE_EXHAUSTED"


class RequestTooLarge(TooLarge):
    """More rows or values than a request limit, the queue or the device can ever take."""


class BodyTooLarge(TooLarge):
    """A REST body (declared, streamed or gunzipped) over `MLSERVER_TORCHFLOW_MAX_BODY_BYTES`."""


class Retryable(TorchFlowError):
    """The server cannot take the request now; the same request may succeed after a back-off."""

    status_code_default = 503
    grpc_code = "UNAVAILABLE"


class QueueFull(Retryable):
    """Back-pressure: the batch queue holds `max_queue_rows` already."""


class QueueTimeout(Retryable):
    """The request waited past `queue_timeout` and was not run."""


class Unloading(Retryable):
    """The model is being unloaded (or reloaded) while the request waited; it was not run."""


class ExecutionTimeout(Retryable):
    """A forward pass ran past `execution_timeout`, or this copy's last one still has not returned."""


class ModelExecutionError(TorchFlowError):
    """The model itself raised on a valid request: one line for the client, the traceback in the log."""


class ModelLoadError(TorchFlowError):
    """The model cannot be found, read, placed or warmed up; raised from `load()`."""


class ModelNotFoundOnDisk(ModelLoadError):
    """No weights file where the MLmodel, the storage-initializer or the tree could put it."""


class DamagedWeights(ModelLoadError):
    """A member of the weights archive fails its CRC-32 check: the copy on disk is corrupt."""


class ModelFetchError(ModelLoadError):
    """A remote model URI (`models:/`, `runs:/`, `s3://`, ...) could not be resolved or downloaded in time."""


def grpc_codes() -> dict[int, str]:
    """REST status -> gRPC code name, for every status the runtime answers with."""
    kinds = (TorchFlowError, BadRequest, NotTorchFlow, Forbidden, TooLarge, Retryable)
    return {kind.status_code_default: kind.grpc_code for kind in kinds}
