"""Typed runtime settings: `parameters.extra` first, then `MLSERVER_MODEL_TORCHFLOW_*` env vars."""

from __future__ import annotations

import functools
import re
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .batching import BatchConfig
from .errors import ModelLoadError
from .limits import DEFAULT_MAX_ELEMENTS, DEFAULT_MAX_ROWS, RequestLimits

ENV_PREFIX = "MLSERVER_MODEL_TORCHFLOW_"
_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


class TorchFlowSettings(BaseSettings):
    """Every knob of the runtime; unknown keys are an error so that a typo never passes silently."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    device: str = "auto"
    """`auto` (CUDA when present, else CPU), `cpu`, `cuda` or `cuda:N`."""

    dtype: Literal["keep", "float16", "bfloat16"] = "keep"
    """Cast floating weights (and floating inputs) to this precision after loading."""

    strict_versions: bool = False
    """Turn a torch / mlflow / Python major.minor mismatch with the saved model into a load error."""

    warmup: bool = True
    """Run the model's own input example on the target device before reporting ready."""

    max_batch_size: int = 0
    """Rows per forward pass; above 1 turns on the runtime's own batcher (from model-settings.json too)."""

    max_batch_time: float = 0.0
    """Seconds the oldest queued request may wait for more rows while the device is busy."""

    preferred_batch_sizes: tuple[int, ...] = ()
    """Pad each batch up to the nearest of these row counts (stable shapes for compile / CUDA graphs)."""

    max_queue_rows: int | None = None
    """Rows allowed to wait; beyond it a request gets a 503. Default: 32 x max_batch_size."""

    queue_timeout: float = 0.0
    """Seconds a request may wait in the queue before it fails with a 503 unrun; 0 = no limit."""

    # --- request limits (limits.py): checked from the declared shapes, before any data is converted
    max_request_rows: int = Field(default=DEFAULT_MAX_ROWS, ge=0)
    """Rows (first dimension) one request may carry; more is a 413. 0 = no limit."""

    max_request_elements: int = Field(default=DEFAULT_MAX_ELEMENTS, ge=0)
    """Values one input of one request may carry (product of its shape); more is a 413. 0 = no limit."""

    def request_limits(self) -> RequestLimits:
        return RequestLimits(max_rows=self.max_request_rows, max_elements=self.max_request_elements)

    # --- end of request limits

    # --- safety and logs (loading.py, logs.py; docs/operations-faults.md)
    allow_pickle: bool = True
    """Load pickled `model.pth` files (MLflow 1.x/2.x). False refuses them before anything is unpickled."""

    log_format: Literal["text", "json"] | None = None
    """`json`: the runtime's log lines become one JSON object each. Default: MLServer's use_structured_logging."""

    # --- end of safety and logs

    @field_validator("preferred_batch_sizes")
    @classmethod
    def _check_sizes(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(v < 1 for v in value):
            raise ValueError("sizes must be positive row counts")
        return tuple(sorted(set(value)))

    def batch_config(self) -> BatchConfig:
        return BatchConfig(
            max_batch_size=self.max_batch_size,
            max_batch_time=max(self.max_batch_time, 0.0),
            preferred_batch_sizes=self.preferred_batch_sizes,
            max_queue_rows=self.max_queue_rows
            if self.max_queue_rows is not None
            else 32 * max(self.max_batch_size, 1),
            queue_timeout=self.queue_timeout,
        )

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        value = value.strip().lower()
        if not _DEVICE.match(value):
            raise ValueError(f"expected auto, cpu, cuda or cuda:N, got {value!r}")
        return value


def load_settings(extra: dict[str, Any] | None) -> TorchFlowSettings:
    """Build the settings once per model; a bad value fails the load with the key that is wrong."""
    try:
        settings = TorchFlowSettings(**(extra or {}))
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in err.errors()
        )
        raise ModelLoadError(
            f"invalid TorchFlow settings ({problems}). Set them in model-settings.json "
            f"`parameters.extra` or as {ENV_PREFIX}<KEY> environment variables; see the README's "
            "settings table."
        ) from err
    return settings


class ServerSettings(BaseSettings):
    """Server-wide knobs (one REST app serves every model): env vars `MLSERVER_TORCHFLOW_<KEY>`."""

    model_config = SettingsConfigDict(env_prefix="MLSERVER_TORCHFLOW_", extra="ignore")

    max_body_bytes: int = 64 * 1024 * 1024
    """REST bodies above this (declared, streamed or gunzipped) get a 413; 0 = no cap."""


@functools.lru_cache(maxsize=1)
def server_settings() -> ServerSettings:
    """Built once per process (the body cap is consulted on every request); `cache_clear()` re-reads."""
    try:
        return ServerSettings()
    except ValidationError:
        return ServerSettings.model_construct()
