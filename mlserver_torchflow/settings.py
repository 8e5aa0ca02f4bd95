"""Typed runtime settings: `parameters.extra` first, then `MLSERVER_MODEL_TORCHFLOW_*` env vars."""

from __future__ import annotations

import functools
import json
import re
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .batching import BatchConfig
from .errors import ModelLoadError
from .limits import DEFAULT_MAX_ELEMENTS, DEFAULT_MAX_ROWS, RequestLimits

ENV_PREFIX = "MLSERVER_MODEL_TORCHFLOW_"
_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
_REPLICA_DEVICE = re.compile(r"^(cpu|cuda|cuda:\d+)$")
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]


class TorchFlowSettings(BaseSettings):
    """Every knob of the runtime; unknown keys are an error so that a typo never passes silently."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    device: str | None = None
    """`auto` (CUDA when present, else CPU), `cpu`, `cuda` or `cuda:N`. Unset (and no `devices`): auto."""

    devices: Annotated[tuple[str, ...] | None, NoDecode] = None
    """One model copy per entry (`cpu`, `cuda:N` or N), or `all` CUDA devices; excludes `device`."""

    dtype: Literal["keep", "float16", "bfloat16"] = "keep"
    """Reduced precision to compute in; `precision` says how."""

    precision: Literal["cast", "autocast"] = "cast"
    """`cast`: weights and floating inputs become `dtype`. `autocast`: fp32 weights, torch.autocast."""

    compile: bool = False
    """torch.compile the loaded module, and compile every warm-up batch size before reporting ready."""

    compile_mode: CompileMode = "default"
    """torch.compile's mode (inductor only); the CUDA-graph modes fall back to plain kernels on CPU."""

    compile_backend: Literal["inductor", "aot_eager", "eager"] = "inductor"
    """torch.compile's backend: `eager` / `aot_eager` trace without generating code (for debugging)."""

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
    def _check_device(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().lower()
        if not _DEVICE.match(value):
            raise ValueError(f"expected auto, cpu, cuda or cuda:N, got {value!r}")
        return value

    @field_validator("devices", mode="before")
    @classmethod
    def _check_devices(cls, value: Any) -> tuple[str, ...] | None:
        """A list (`["cpu", "cpu"]`, `[0, 1]`), `all`, or, from the environment, `0,1` or a JSON list."""
        if value is None:
            return None
        if isinstance(value, str):
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else [v for v in text.split(",") if v.strip()]
        if isinstance(value, int | str):
            value = [value]
        entries = [_replica_device(v) for v in value]
        if not entries:
            raise ValueError("expected at least one device, got an empty list")
        if "all" in entries and len(entries) > 1:
            raise ValueError(f"`all` stands alone (every visible CUDA device), got {entries}")
        return tuple(entries)

    @model_validator(mode="after")
    def _check_combinations(self) -> TorchFlowSettings:
        if self.device is not None and self.devices is not None:
            raise ValueError(
                f"both device ({self.device!r}) and devices ({list(self.devices)}) are set; they are "
                "alternatives: keep `device` for one copy, or `devices` for one copy per entry"
            )
        if self.precision == "autocast" and self.dtype == "keep":
            raise ValueError("precision `autocast` needs dtype float16 or bfloat16, got dtype `keep`")
        if self.compile and self.compile_mode != "default" and self.compile_backend != "inductor":
            raise ValueError(
                f"compile_mode {self.compile_mode!r} is an inductor mode, but compile_backend is "
                f"{self.compile_backend!r}; use compile_backend `inductor` or compile_mode `default`"
            )
        return self


def _replica_device(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"expected a device name or a CUDA index, got {value!r}")
    text = str(value).strip().lower()
    if text.isdigit():
        return f"cuda:{int(text)}"
    if text == "all" or _REPLICA_DEVICE.match(text):
        return text
    raise ValueError(f"expected cpu, cuda, cuda:N, a CUDA index N or `all`, got {text!r}")


def load_settings(extra: dict[str, Any] | None) -> TorchFlowSettings:
    """Build the settings once per model; a bad value fails the load with the key that is wrong.

    `parameters.extra` wins over the environment, also across `device` / `devices`: naming one of
    them in `extra` sets the other to unset, so a runtime-wide env var does not clash with it.
    """
    kwargs = dict(extra or {})
    for one, other in (("device", "devices"), ("devices", "device")):
        if one in kwargs and other not in kwargs:
            kwargs[other] = None
    try:
        settings = TorchFlowSettings(**kwargs)
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
