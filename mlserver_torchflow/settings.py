"""Typed runtime settings: `parameters.extra` first, then `MLSERVER_MODEL_TORCHFLOW_*` env vars."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

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
