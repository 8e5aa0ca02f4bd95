"""What the gRPC lane (`serving.grpc_lane`) reads of MLServer's data plane, and the behaviour it repeats.

MLServer's `InferenceServicer.ModelInfer` converts the protobuf request to pydantic, calls
`DataPlane.infer`, moves the response's headers to trailing metadata and converts the response back,
inside `handle_mlserver_error`. The lane keeps, for the models it serves:
- `DataPlane._infer_contextmanager`: the three metrics by model name and the version as sent (success
  count, failure count, duration summary), `ModelNotReady` for a model not ready, `model_context`;
- `DataPlane.infer`: the response's id is the request's; CloudEvents response headers, lower-cased,
  as trailing metadata (`_SetTrailingMetadata`). A server with the response cache, or with middleware
  other than CloudEvents, gets no lane;
- `handle_mlserver_error`: MLServer's gRPC log line with the traceback, then an abort with the code of
  the error's HTTP status (`grpc_status` extends the table), details the error's message.
"""

from __future__ import annotations

from typing import Any

import grpc
from mlserver.cloudevents import CloudEventsMiddleware, CloudEventsTypes
from mlserver.errors import MLServerError
from mlserver.grpc.logging import logger as grpc_logger
from mlserver.grpc.utils import _grpc_status_code

from .targets import Patch, Target


class DataPlaneView:
    """MLServer's data plane as the lane uses it; `usable` is False where the lane would behave otherwise."""

    def __init__(self, data_plane: Any) -> None:
        self.registry = data_plane._model_registry
        self._metrics = (
            data_plane._ModelInferRequestSuccess,
            data_plane._ModelInferRequestFailure,
            data_plane._ModelInferRequestDuration,
        )
        middlewares: tuple[Any, ...] = getattr(data_plane._inference_middleware, "_middlewares", ())
        events = middlewares[0] if len(middlewares) == 1 else None
        self._events = events if type(events) is CloudEventsMiddleware else None
        self.usable = data_plane._response_cache is None and self._events is not None
        self._children: dict[tuple[str, str], tuple[Any, Any, Any]] = {}

    def metrics(self, name: str, version: str) -> tuple[Any, Any, Any]:
        """The success counter, failure counter and duration summary of this model name and version,
        looked up once (`labels()` costs more than the increment)."""
        found = self._children.get((name, version))
        if found is None:
            success, failure, duration = self._metrics
            found = (
                success.labels(model=name, version=version),
                failure.labels(model=name, version=version),
                duration.labels(model=name, version=version),
            )
            self._children[(name, version)] = found
        return found

    def trailing_metadata(self, model_settings: Any, request_id: str) -> tuple[tuple[str, str], ...]:
        """The CloudEvents headers MLServer's middleware puts on a response, as its servicer sends them."""
        assert self._events is not None  # `usable` is checked before a lane is built
        headers = self._events._get_headers(CloudEventsTypes.Response, model_settings, request_id)
        return tuple((key.lower(), value) for key, value in headers.items())


async def abort(context: grpc.aio.ServicerContext, err: Exception) -> None:
    """End the call as `handle_mlserver_error` does."""
    grpc_logger.exception(err)
    code = _grpc_status_code(err) if isinstance(err, MLServerError) else grpc.StatusCode.INTERNAL
    await context.abort(code=code, details=str(err))


PATCH = Patch(
    name="grpc_lane",
    why="gRPC inference for our models without MLServer's pydantic round trip, its behaviour kept",
    targets=(
        # The whole class: ModelInfer's own source hides behind handle_mlserver_error's wrapper.
        Target("mlserver.grpc.servicers:InferenceServicer", "mlserver", ("1.7.1",), "6a9db87d4952"),
        Target("mlserver.grpc.utils:handle_mlserver_error", "mlserver", ("1.7.1",), "464632184af5"),
        Target("mlserver.handlers.dataplane:DataPlane.infer", "mlserver", ("1.7.1",), "8eeef2966981"),
        Target(
            "mlserver.handlers.dataplane:DataPlane._infer_contextmanager",
            "mlserver",
            ("1.7.1",),
            "5b98a0626d77",
        ),
        Target("mlserver.handlers.dataplane:DataPlane.__init__", "mlserver", ("1.7.1",), "cb48f5e2370b"),
        Target(
            "mlserver.cloudevents:CloudEventsMiddleware._get_headers", "mlserver", ("1.7.1",), "cf7fbfc84de8"
        ),
        Target(
            "mlserver.grpc.converters:ModelInferResponseConverter.from_types",
            "mlserver",
            ("1.7.1",),
            "9ddc1c7672dc",
        ),
    ),
)
