"""Typed runtime settings: `parameters.extra` first, then `MLSERVER_MODEL_TORCHFLOW_*` env vars."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .batching import BatchConfig
from .errors import ModelLoadError

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
        return TorchFlowSettings(**(extra or {}))
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in err.errors()
        )
        raise ModelLoadError(
            f"invalid TorchFlow settings ({problems}). Set them in model-settings.json "
            f"`parameters.extra` or as {ENV_PREFIX}<KEY> environment variables; see the README's "
            "settings table."
        ) from err
