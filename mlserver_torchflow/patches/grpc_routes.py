"""MLServer's gRPC metrics interceptor, wrapped: the one door through which a gRPC call is re-routed.

MLServer registers its servicer's methods before any runtime loads, and gRPC hands a method to the
handler registered first, so they cannot be replaced. Its metrics interceptor (`PromServerInterceptor`,
on whenever metrics are) is called for every RPC, looked up on its class per call, with the continuation
that finds MLServer's handler. Wrapped here, for each call:
- `restricted.refusal`: a restricted method without its header is refused before MLServer's handler runs;
- `route`: a method's handler is replaced by one built around MLServer's own (the gRPC lane,
  `serving.grpc_lane`), which MLServer's metrics then wrap as they wrap its handler.
Without the interceptor (metrics off) neither happens: `restricted` refuses to start, and the lane is off.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from mlserver.grpc.interceptors import PromServerInterceptor

from . import restricted
from .targets import Patch, Target

Lane = Callable[[grpc.RpcMethodHandler], grpc.RpcMethodHandler]
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]]
_lanes: dict[str, Lane] = {}
_original = PromServerInterceptor.intercept_service


def route(method: str, lane: Lane) -> None:
    """Send calls to `method` (`/package.Service/Method`) to `lane(MLServer's handler)`; the last one wins."""
    _lanes[method] = lane


def unroute(method: str) -> None:
    _lanes.pop(method, None)


def intercepted(interceptors: Any) -> bool:
    """Whether MLServer's gRPC server runs the interceptor wrapped here (it does unless metrics are off)."""
    return any(isinstance(i, PromServerInterceptor) for i in interceptors)


async def _intercept(self: Any, continuation: Continuation, details: grpc.HandlerCallDetails) -> Any:
    refused = restricted.refusal(details)
    if refused is not None:
        return refused
    lane = _lanes.get(details.method)
    if lane is not None:
        found = continuation

        async def continuation(call: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
            return lane(await found(call))

    return await _original(self, continuation, details)


def install() -> None:
    PromServerInterceptor.intercept_service = _intercept  # type: ignore[method-assign]


PATCH = Patch(
    name="grpc_routes",
    why="restricted gRPC methods refused, and gRPC inference re-routed to the lane, inside MLServer's metrics",
    targets=(
        Target(
            "mlserver.grpc.interceptors:PromServerInterceptor.intercept_service",
            "mlserver",
            ("1.7.1",),
            "204ed05c6e3d",
        ),
        # Adds the interceptor whenever metrics are on, and registers the servicer's methods.
        Target("mlserver.grpc.server:GRPCServer._create_server", "mlserver", ("1.7.1",), "2bd570d750e1"),
    ),
    install=install,
)
