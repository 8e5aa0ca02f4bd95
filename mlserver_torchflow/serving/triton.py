"""Where Triton's extensions meet MLServer: per-model custom handlers, and the routes and gRPC methods.

Triton's config and statistics of a model are custom handlers on the model instance: with parallel
workers, MLServer's proxy model in the main process forwards a custom handler, by name, to the worker
that holds the model, so the REST routes and gRPC methods (mounted once per server through
`patches.frontends`) reach the model wherever it runs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from mlserver.handlers.custom import CustomHandler, register_custom_handler

from ..patches.frontends import Frontends
from . import grpc_lane, rest, triton_grpc

Handler = Callable[[], Awaitable[dict[str, Any]]]


def custom_handler(model: str, name: str, path: str, call: Handler) -> Handler:
    """`call` as MLServer's custom handler `name` (also served at `GET /v2/models/<model>/<path>`)."""

    async def handler() -> dict[str, Any]:
        return await call()

    handler.__name__ = name  # with parallel workers MLServer calls it by name on the worker's model
    register_custom_handler(CustomHandler(rest_path=f"/v2/models/{model}/{path}", rest_method="GET"), handler)
    return handler


def mount(servers: Frontends) -> None:
    """Triton's REST routes and gRPC methods, and the gRPC lane, once per MLServer."""
    rest.mount(servers)
    triton_grpc.mount(servers)
    grpc_lane.mount(servers)
