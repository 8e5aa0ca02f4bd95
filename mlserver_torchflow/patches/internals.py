"""Reads of third-party internals that have no public accessor, each behind a function of its own.

Nothing is replaced here: these only look at private state, which is still a dependency on an
internal, so each has a `Target` the fingerprint test watches.
"""

from __future__ import annotations

import logging
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


PATCH = Patch(
    name="internals",
    why="look up an existing prometheus collector; read MLServer's structured-logging choice",
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
    ),
)
