"""Triton's gRPC methods that MLServer's `inference.GRPCInferenceService` lacks, beside MLServer's own.

tritonclient and perf_analyzer call `ModelConfig` and `ModelStatistics`, which MLServer's servicer
lacks (it has the repository methods: `patches.repository_index` fixes what they answer). A generic
handler on the running server answers the two, since gRPC routes to it only methods no registered
handler serves; its messages live in a descriptor pool of their own
(`protocol.triton_pb`), because Triton's `inference.*` types clash with MLServer's in the default one.
Errors get the gRPC code of their HTTP status, as MLServer's own methods do.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from mlserver.errors import MLServerError
from mlserver.grpc.utils import STATUS_CODE_MAPPING

from ..common import first_line, logger
from ..errors import BadRequest
from ..patches.frontends import Frontends
from ..protocol import triton_pb
from .rest import all_stats, triton_call

Method = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def methods(frontends: Frontends) -> dict[str, Method]:
    async def model_config(request: dict[str, Any]) -> dict[str, Any]:
        name, version = _model(request)
        return {"config": await triton_call(frontends, "triton_config", name, version)}

    async def model_statistics(request: dict[str, Any]) -> dict[str, Any]:
        name = request.get("name", "")
        if not name:
            return {"model_stats": await all_stats(frontends)}
        return {"model_stats": [await triton_call(frontends, "triton_stats", name, request.get("version"))]}

    return {
        "ModelConfig": model_config,
        "ModelStatistics": model_statistics,
    }


def _model(request: dict[str, Any]) -> tuple[str, str | None]:
    name = request.get("name", "")
    if not name:
        raise BadRequest("the request names no model; set `name` to the model's name.")
    return name, request.get("version") or None


def _unary(rpc: str, method: Method) -> grpc.RpcMethodHandler:
    request_type, response_type = triton_pb.METHODS[rpc]

    async def handle(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            try:
                request = triton_pb.decode(request_type, data)
            except ValueError as err:
                raise BadRequest(f"the {rpc} request is not a {request_type} message: {err}") from err
            return triton_pb.encode(response_type, await method(request))
        except MLServerError as err:
            code = STATUS_CODE_MAPPING.get(err.status_code, grpc.StatusCode.UNKNOWN)
            await context.abort(code, str(err))
        except Exception as err:
            logger.exception("gRPC %s failed", rpc)
            await context.abort(
                grpc.StatusCode.INTERNAL, f"{rpc} failed: {type(err).__name__}: {first_line(str(err))}"
            )
        raise AssertionError("unreachable: abort raises")

    return grpc.unary_unary_rpc_method_handler(handle)


def mount(frontends: Frontends) -> None:
    if frontends.grpc_server is None:
        logger.warning(
            "MLServer's gRPC server was not found: Triton's ModelConfig and ModelStatistics are off"
        )
        return
    handlers = {rpc: _unary(rpc, method) for rpc, method in methods(frontends).items()}
    generic = grpc.method_handlers_generic_handler(triton_pb.SERVICE, handlers)
    frontends.grpc_server.add_generic_rpc_handlers((generic,))
