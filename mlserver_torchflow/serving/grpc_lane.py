"""The gRPC lane: `ModelInfer` for a TorchFlow model in this process, without MLServer's pydantic round trip.

MLServer's servicer turns the protobuf request into an `InferenceRequest`, the runtime's arrays into
JSON lists in an `InferenceResponse`, and that into protobuf again (`struct.pack` for raw outputs). On a
1-row request that is a large part of the server's own CPU per call. The lane reads the request message
into what the runtime checks (`protocol.grpc_codec`), runs `TorchFlowRuntime.answer`, and writes the
response message from the arrays; what MLServer does around that is kept (`patches.grpc_lane`): its
data-plane metrics, CloudEvents trailing metadata, error log and status codes. MLServer's metrics
interceptor still wraps the call (`patches.grpc_routes`).

Every other call takes MLServer's handler: another runtime's model, a model MLServer runs in parallel
workers, an unknown model or version (MLServer's own error), and every call when `grpc_fast_lane` is
off, metrics are off, or the response cache is on.
"""

from __future__ import annotations

import time
from typing import Any

import grpc
from mlserver.context import model_context
from mlserver.errors import MLServerError, ModelNotReady
from mlserver.grpc.utils import to_headers

from ..common import Named, logger
from ..config import server_settings
from ..patches import grpc_routes
from ..patches.frontends import Frontends
from ..patches.grpc_lane import DataPlaneView, abort
from ..protocol.grpc_codec import read_request, write_response

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


class Lane:
    """Builds, around MLServer's `ModelInfer` handler, one that serves this runtime's models itself."""

    def __init__(self, plane: DataPlaneView) -> None:
        self._plane = plane
        self._wrapped: tuple[Any, Any] = (None, None)  # (MLServer's handler, the lane's), built once

    def wrap(self, handler: grpc.RpcMethodHandler | None) -> Any:
        if handler is None or handler.unary_unary is None:
            return handler
        seen, built = self._wrapped
        if handler is seen:
            return built
        fallback = handler.unary_unary

        async def infer(request: Any, context: grpc.aio.ServicerContext) -> Any:
            model = await self._ours(request.model_name, request.model_version)
            if model is None:
                return await fallback(request, context)
            try:
                return await self._answer(model, request, context)
            except Exception as err:
                await abort(context, err)

        built = grpc.unary_unary_rpc_method_handler(
            infer,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        self._wrapped = (handler, built)
        return built

    async def _ours(self, name: str, version: str) -> Any:
        """The model, if it is a TorchFlow model loaded in this process; else None (MLServer's path)."""
        try:
            model = await self._plane.registry.get_model(name, version)
        except MLServerError:
            return None
        return model if hasattr(model, "answer") and bool(getattr(model, "copies", None)) else None

    async def _answer(self, model: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        parsed = read_request(request)
        raw = bool(request.raw_input_contents)
        name, version = request.model_name, request.model_version
        success, failure, duration = self._plane.metrics(name, version)

        def encode(outputs: Named) -> Any:
            return write_response(model.name, model.version, parsed.id, outputs, raw)

        started = time.perf_counter()
        try:
            if not model.ready:
                raise ModelNotReady(name, version)
            with model_context(model.settings):
                response = await model.answer(parsed, encode, lambda: to_headers(context))
        except Exception:  # as prometheus' count_exceptions() counts them
            failure.inc()
            raise
        finally:
            duration.observe(max(time.perf_counter() - started, 0))
        success.inc()
        context.set_trailing_metadata(self._plane.trailing_metadata(model.settings, parsed.id))
        return response


def mount(frontends: Frontends) -> None:
    """Route gRPC inference through the lane, once per MLServer, where it behaves as MLServer's path."""
    grpc_routes.unroute(MODEL_INFER)
    if not server_settings().grpc_fast_lane:
        return
    plane = DataPlaneView(frontends.data_plane)
    if frontends.grpc_server is None or not frontends.grpc_routable or not plane.usable:
        logger.info(
            "gRPC inference takes MLServer's path: no gRPC server, metrics off, the response cache on, "
            "or inference middleware other than CloudEvents"
        )
        return
    grpc_routes.route(MODEL_INFER, Lane(plane).wrap)
    logger.info("gRPC inference of this runtime's models takes the lane (grpc_fast_lane)")
