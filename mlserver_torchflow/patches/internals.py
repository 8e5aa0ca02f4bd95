"""Reads of third-party internals that have no public accessor, each behind a function of its own.

Nothing is replaced here: these only look at private state, which is still a dependency on an
internal, so each has a `Target` the fingerprint test watches.
"""

from __future__ import annotations

import logging
import multiprocessing
from typing import Any

from prometheus_client import REGISTRY

from .targets import Patch, Target


def registered_collector(name: str) -> Any:
    """The collector already registered under `name` in prometheus_client's default registry, or None.

    A reloaded model re-creates its metrics; prometheus_client refuses a second registration of a
    name and has no public lookup, so the existing one is reused.
    """
    return REGISTRY._names_to_collectors.get(name)


def mlserver_structured_logging() -> bool:
    """Whether MLServer was started with `use_structured_logging: true` (its formatter remembers it)."""
    handlers = logging.getLogger("mlserver").handlers
    return any(getattr(h.formatter, "use_structured_logging", False) for h in handlers)


def mlserver_debug() -> bool:
    """Whether MLServer runs with `debug: true` (it sets its logger to DEBUG then, INFO otherwise)."""
    return logging.getLogger("mlserver").level == logging.DEBUG


def in_mlserver_worker() -> bool:
    """Whether this process is one of MLServer's parallel workers (`parallel_workers` >= 1)."""
    from mlserver.parallel.worker import Worker

    return isinstance(multiprocessing.current_process(), Worker)


PATCH = Patch(
    name="internals",
    why="look up an existing prometheus collector; read MLServer's log format, debug flag and workers",
    targets=(
        # Sets up `_names_to_collectors`, the name -> collector table read above.
        Target(
            "prometheus_client.registry:CollectorRegistry.__init__",
            "prometheus_client",
            ("0.26.0",),
            "b889cf2f0eb9",
        ),
        # Stores `use_structured_logging` on the formatter of MLServer's handler.
        Target("mlserver.logging:ModelLoggerFormatter.__init__", "mlserver", ("1.7.1",), "ed0a9c366f04"),
        # Sets MLServer's logger to DEBUG exactly when `debug` is on.
        Target("mlserver.logging:configure_logger", "mlserver", ("1.7.1",), "04488ccd7f84"),
        # Each parallel worker is a process of this class.
        Target("mlserver.parallel.worker:Worker.__init__", "mlserver", ("1.7.1",), "276415e71100"),
    ),
)
