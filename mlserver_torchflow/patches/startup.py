"""A model that fails to load at startup fails the process, instead of looking like a clean exit.

MLServer 1.7.1 (`MLServer.start`) catches a startup load failure, logs "Some of the models failed to
load during startup!", stops its servers and returns: `mlserver start` exits with code 0, and until the
REST server has stopped `/v2/health/ready` answers 200, because the failed model has already left the
registry and readiness is "every registered model is ready" (true of none). This module:

- marks startup as failed the moment one of our models fails inside MLServer's startup loads (or, as a
  fallback, when MLServer logs its startup-failure line, e.g. when the model ran in a parallel worker);
- from then on answers readiness false (REST `/v2/health/ready` and gRPC `ServerReady`);
- drops the traceback from MLServer's line when the error is ours (the runtime has logged the reason
  with its fix, once);
- lets MLServer shut down gracefully, then exits with `EXIT_CODE`, so that Kubernetes reports the
  container as failed (`Error`, exit code 3) and restarts it with back-off, the reason in its log.

A model loaded later through the repository API (`POST /v2/repository/models/<m>/load`) that fails
changes nothing here: MLServer answers that request with an error and keeps serving the others.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import sys
from typing import Any

from mlserver.handlers.dataplane import DataPlane

from ..common import LOGGER_NAME
from ..errors import TorchFlowError
from .targets import Patch, Target

EXIT_CODE = 3
MLSERVER_STARTUP_FAILED = "Some of the models failed to load during startup"
# MLServer.start gathers `MultiModelRegistry.load(settings)` coroutines: each runs as its own task.
_STARTUP_LOAD_TASK = "MultiModelRegistry.load"

_state = {"failed": False}
_original_ready = DataPlane.ready


def install() -> None:
    logging.getLogger("mlserver").addFilter(_StartupFailureFilter())
    DataPlane.ready = _ready  # type: ignore[method-assign]


def during_startup() -> bool:
    """Whether the running load is one of the loads `mlserver start` makes before serving."""
    task = asyncio.current_task()
    coro: Any = task.get_coro() if task is not None else None
    return getattr(coro, "__qualname__", "") == _STARTUP_LOAD_TASK


def mark_failed() -> None:
    """Startup is lost: readiness is false from now on, and the process will exit with EXIT_CODE."""
    if not _state["failed"]:
        _state["failed"] = True
        atexit.register(_exit_failed)


def failed() -> bool:
    return _state["failed"]


async def _ready(self: DataPlane) -> bool:
    if _state["failed"]:
        return False
    return bool(await _original_ready(self))


def _exit_failed() -> None:
    """Runs after MLServer's graceful stop, when `mlserver start` would exit 0."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(EXIT_CODE)


class _StartupFailureFilter(logging.Filter):
    """Watches MLServer's own logger for its startup-failure line (a filter never drops it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not isinstance(record.msg, str) or not record.msg.startswith(MLSERVER_STARTUP_FAILED):
            return True
        mark_failed()
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, TorchFlowError):
            # The runtime logged this error with its fix already; the traceback adds only noise.
            record.exc_info, record.exc_text = None, None
            record.msg = f"{record.msg} (the reason is logged above by {LOGGER_NAME})"
        record.msg = f"{record.msg} The server stops and exits with code {EXIT_CODE}."
        return True


PATCH = Patch(
    name="startup",
    why="a model that fails at startup makes the process exit 3 with readiness false, not exit 0",
    targets=(
        Target("mlserver.handlers.dataplane:DataPlane.ready", "mlserver", ("1.7.1",), "5fdf20129f15"),
        # Catches the startup load failure, logs MLSERVER_STARTUP_FAILED and returns (exit 0).
        Target("mlserver.server:MLServer.start", "mlserver", ("1.7.1",), "58ba8eea996c"),
        # Each startup load runs as a task of this coroutine (`during_startup`).
        Target("mlserver.registry:MultiModelRegistry.load", "mlserver", ("1.7.1",), "1202cddafb62"),
    ),
    install=install,
)
