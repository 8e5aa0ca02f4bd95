"""Around a model copy's life in MLServer: what its construction takes over, where its files come from,
and what its unload waits for."""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections.abc import Callable

from mlserver.errors import InvalidModelURI
from mlserver.settings import ModelParameters, ModelSettings
from mlserver.utils import to_absolute_path

from ..config import TorchFlowSettings, server_settings
from ..engine.remote import Fetched, fetch, is_remote

# Seconds an unload waits for requests that resolved this copy before MLServer swapped it out.
UNLOAD_GRACE = 0.1


def take_over_batching(settings: ModelSettings) -> None:
    """Move MLServer's `max_batch_size` / `max_batch_time` into our settings, and zero MLServer's copy.

    MLServer's generic batcher wraps any model with `max_batch_size > 1`; ours replaces it. The values
    go into `parameters.extra`, which travels to parallel workers with the rest of the settings.
    """
    if settings.max_batch_size <= 1:
        return
    if settings.parameters is None:
        settings.parameters = ModelParameters()
    extra = settings.parameters.extra if settings.parameters.extra is not None else {}
    extra.setdefault("max_batch_size", settings.max_batch_size)
    extra.setdefault("max_batch_time", settings.max_batch_time)
    settings.parameters.extra = extra
    settings.max_batch_size = 0
    settings.max_batch_time = 0


async def model_folder(model: ModelSettings, settings: TorchFlowSettings) -> tuple[str, Fetched | None]:
    """`parameters.uri` as a local folder: a path resolved as MLServer does, or any other MLflow URI
    fetched into the cache (engine/remote.py); `locate` then explains what is missing."""
    uri = model.parameters.uri if model.parameters else None
    if not uri:
        raise InvalidModelURI(model.name)
    if is_remote(uri):
        cache = server_settings().cache_dir()
        fetched = await fetch(
            uri, cache, settings.tracking_uri, settings.registry_uri, settings.download_timeout
        )
        return str(fetched.path), fetched
    return to_absolute_path(model, urllib.parse.urlparse(uri, scheme="file").path), None


async def settle(active: Callable[[], int], timeout: float) -> None:
    """Wait until `active()` (the copy's requests in progress) is 0, up to `timeout` seconds, so that a
    reload or an unload fails none of them. A short grace first lets requests that resolved this copy
    just before MLServer swapped it out reach `predict`."""
    ends = time.monotonic() + timeout
    await asyncio.sleep(UNLOAD_GRACE)
    while active() and time.monotonic() < ends:
        await asyncio.sleep(0.01)
