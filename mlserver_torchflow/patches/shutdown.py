"""A graceful drain on SIGTERM: readiness false at once, no new connections, every accepted request answered.

MLServer 1.7.1 answers SIGTERM by stopping its gRPC server with a 5 s grace, and only then its REST
server, which meanwhile keeps accepting connections and requests; readiness stays true throughout. Its
signal handler looks `MLServer.stop` up when the signal comes, so this replaces that method:

1. `draining()` turns true: the health and readiness answers (serving.rest, and the gRPC servicer's
   data plane in patches.frontends) say not ready.
2. Both servers stop listening at once; their in-flight requests and RPCs get `drain_timeout` seconds
   (`MLSERVER_TORCHFLOW_DRAIN_TIMEOUT`). Batches keep running meanwhile.
3. One second before the timeout, what is still queued is answered with a retryable 503 (the runtimes
   `register` how), so no accepted request is cut off without an answer.
4. MLServer's own `stop` then runs (workers, Kafka, the metrics server), and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Callable
from typing import Any

from mlserver.server import MLServer

from ..common import logger
from ..config import server_settings
from ..errors import Unloading
from .targets import Patch, Target

_state = {"draining": False}
_deadline_hooks: weakref.WeakSet[Any] = weakref.WeakSet()
_original = MLServer.stop
MARGIN = 1.0  # seconds before the timeout at which queued requests get their 503


def draining() -> bool:
    """True from the moment the process was told to stop."""
    return _state["draining"]


def register(owner: Any) -> None:
    """A model taking part in the drain: `owner.expire_queued(err)` answers its queued requests with `err`
    when the drain time runs out, and `owner.drained()` is called once the servers have stopped. Held
    weakly: an unloaded model drops out by itself."""
    _deadline_hooks.add(owner)


def _expire() -> None:
    err = Unloading("the server is shutting down and this request could not run in time; retry it.")
    for owner in list(_deadline_hooks):
        with contextlib.suppress(Exception):  # one model's failure must not keep the others' answers
            owner.expire_queued(err)


async def _drain(self: MLServer, sig: int | None = None) -> None:
    if _state["draining"]:
        return
    _state["draining"] = True
    timeout = server_settings().drain_timeout
    logger.info("told to stop: not ready from now, draining accepted requests for up to %.1fs", timeout)
    loop = asyncio.get_running_loop()
    timer: Callable[[], None] = loop.call_later(max(0.0, timeout - MARGIN), _expire).cancel
    stops = []
    rest = getattr(getattr(self, "_rest_server", None), "_server", None)
    if rest is not None:  # uvicorn: stop listening, then wait for in-flight requests
        rest.config.timeout_graceful_shutdown = timeout
        rest.should_exit = True
    grpc_server = getattr(getattr(self, "_grpc_server", None), "_server", None)
    if grpc_server is not None:
        stops.append(grpc_server.stop(grace=timeout))
    try:
        await asyncio.gather(*stops)
        ends = loop.time() + timeout + MARGIN  # uvicorn cancels what is left at the timeout
        while rest is not None and rest.server_state.tasks and loop.time() < ends:
            await asyncio.sleep(0.05)  # REST requests still being answered
    finally:
        timer()
    for owner in list(_deadline_hooks):
        with contextlib.suppress(Exception):
            owner.drained()
    await _original(self, sig)


def install() -> None:
    MLServer.stop = _drain  # type: ignore[method-assign]


PATCH = Patch(
    name="shutdown",
    why="drain on SIGTERM: not ready at once, both servers stop listening, accepted requests answered",
    targets=(
        # Calls `self.stop(sig=...)` from its signal handlers, looked up when the signal comes.
        Target("mlserver.server:MLServer._add_signal_handlers", "mlserver", ("1.7.1",), "51a4567f5523"),
        Target("mlserver.server:MLServer.stop", "mlserver", ("1.7.1",), "6074f4c8a15b"),
        # uvicorn's server: `should_exit`, and `config.timeout_graceful_shutdown` read in `shutdown`.
        Target("uvicorn.server:Server.shutdown", "uvicorn", ("0.55.0",), "5d01b8b1f116"),
        Target("mlserver.rest.server:RESTServer.stop", "mlserver", ("1.7.1",), "0596af067a23"),
        Target("mlserver.grpc.server:GRPCServer.stop", "mlserver", ("1.7.1",), "c188e291c04e"),
    ),
    install=install,
)
