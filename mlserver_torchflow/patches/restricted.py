"""Restricted APIs, as Triton has them: the model repository and statistics behind a required header.

Anyone who reaches MLServer's inference port can unload its models (`POST /v2/repository/models/<m>/unload`,
or the gRPC twins): one request takes the service down. With `MLSERVER_TORCHFLOW_RESTRICTED_APIS` naming a
group, its calls need the header `MLSERVER_TORCHFLOW_RESTRICTED_HEADER` (`key=value`; gRPC: metadata), or
are off for everyone without one; a refusal is a 403 / PERMISSION_DENIED that says how to enable it.

REST: the serving layer's routes call `check`. gRPC: MLServer registers its repository methods before any
runtime loads, so they cannot be replaced; `grpc_routes` asks `refusal` for every RPC, before MLServer's
handler runs.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from typing import Any

import grpc

from ..config import server_settings
from ..errors import Forbidden

# gRPC methods by group: Triton's names on MLServer's inference service, and MLServer's own service.
GRPC_METHODS = {
    "model-repository": {
        f"/{service}/{rpc}"
        for service in ("inference.GRPCInferenceService", "inference.model_repository.ModelRepositoryService")
        for rpc in ("RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload")
    },
    "statistics": {"/inference.GRPCInferenceService/ModelStatistics"},
}


def check(group: str, headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> None:
    """Raise `Forbidden` unless `group` is open or the request carries the restricted header."""
    settings = server_settings()
    if group not in settings.restricted():
        return
    key, _, value = settings.restricted_header.partition("=")
    key = key.strip().lower()
    items = headers.items() if isinstance(headers, Mapping) else headers
    sent = next((v for k, v in items if k.lower() == key), None) if key else None
    if sent is not None and hmac.compare_digest(str(sent).encode(), value.encode()):
        return
    how = (
        f"send the header (gRPC: metadata) {key!r} with the value this server's operator set"
        if key
        else "it is off on this server; the operator can set MLSERVER_TORCHFLOW_RESTRICTED_HEADER to open it"
    )
    raise Forbidden(f"the {group} API is restricted (MLSERVER_TORCHFLOW_RESTRICTED_APIS): {how}.")


def _group_of(method: str) -> str | None:
    return next((g for g, methods in GRPC_METHODS.items() if method in methods), None)


def _refusal(message: str) -> grpc.RpcMethodHandler:
    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, message)

    return grpc.unary_unary_rpc_method_handler(refuse)


def refusal(details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
    """A handler that refuses the call, when it is to a restricted method without the header; else None."""
    group = _group_of(details.method)
    if group is not None:
        try:
            check(group, details.invocation_metadata or ())
        except Forbidden as err:
            return _refusal(str(err))
    return None
