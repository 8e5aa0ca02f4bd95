"""The garbage collector's full passes, kept off the request path.

A serving process holds millions of long-lived objects (torch, MLflow, pydantic, the model). CPython
scans its oldest generation whole once enough objects have been promoted into it; measured on the
benchmark's server, such a pass stopped the event loop for about 200 ms every couple of seconds under
load, and every request in flight waited it out (the p99 of 32 REST clients was 230 ms for a 23 ms
pass). `gc.freeze()` moves what exists after a load into a permanent generation that the collector
never scans; objects made later are collected as before, so only what a load built is exempt. An
unload thaws, collects (the old model's reference cycles go) and freezes again.
"""

from __future__ import annotations

import gc
import time

from ..common import logger


def settle(enabled: bool) -> None:
    """After a model loaded: collect once, then freeze what survives."""
    if not enabled:
        return
    started = time.monotonic()
    gc.collect()
    gc.freeze()
    logger.debug(
        "froze %d objects out of the collector's full passes in %.2fs",
        gc.get_freeze_count(),
        time.monotonic() - started,
    )


def release(enabled: bool) -> None:
    """After a model unloaded: what only it used is collectable again, then the rest is refrozen."""
    if not enabled:
        return
    gc.unfreeze()
    settle(enabled)
