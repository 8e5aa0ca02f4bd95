"""The per-model settings, `TorchFlowSettings`: `parameters.extra` in model-settings.json first, then
`MLSERVER_MODEL_TORCHFLOW_<KEY>` environment variables, built once per load by `load_settings`. Its fields
of devices (device.py) and of batching (batching.py) sit beside it; loading, limits and safety here."""

from __future__ import annotations

import os
from typing import Any

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from ..errors import ModelLoadError
from .batching import BatchSettings
from .device import DeviceSettings
from .server import SERVER_ENV_PREFIX, problems
from .views import DEFAULT_MAX_ELEMENTS, DEFAULT_MAX_ROWS, RequestLimits

ENV_PREFIX = "MLSERVER_MODEL_TORCHFLOW_"
# Settings that moved from one scope to the other: a model naming one is told where it went.
_MOVED = {"log_format": f"{SERVER_ENV_PREFIX}LOG_FORMAT"}


class TorchFlowSettings(BatchSettings, DeviceSettings, BaseSettings):
    """Every knob of the runtime; unknown keys are an error so that a typo never passes silently."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", frozen=True, use_attribute_docstrings=True
    )

    tracking_uri: str | None = None
    """The MLflow tracking server a `models:/`, `runs:/` or `mlflow-artifacts:/` URI is resolved with.
    Unset: MLflow's own `MLFLOW_TRACKING_URI` (docs/registry.md)."""

    registry_uri: str | None = None
    """The MLflow model registry for `models:/` URIs. Unset: MLflow's `MLFLOW_REGISTRY_URI`, else the
    tracking server."""

    download_timeout: float = Field(default=240.0, gt=0)
    """Seconds a remote model URI has to be resolved and downloaded into the cache; past it the load
    fails with a message (a hanging server or bucket never hangs the pod) and nothing half-written is
    kept. The default fits inside the shipped manifests' 5-minute startup probe: raise both together."""

    strict_versions: bool = False
    """Turn a torch or Python major.minor mismatch between the saved model and the server into a
    load error instead of a warning (an mlflow mismatch is only reported: the runtime never loads
    through mlflow)."""

    warmup: bool = True
    """Run the model's `input_example.json` / `serving_input_example.json` on the target device
    during `load()`: a model that cannot run its own example does not become ready. With `compile`,
    also one pass per batch size; `false` leaves every compilation to the first requests."""

    max_request_rows: int = Field(default=DEFAULT_MAX_ROWS, ge=0)
    """Rows (first dimension) one request may carry; more is a 413. 0 = no limit."""

    max_request_elements: int = Field(default=DEFAULT_MAX_ELEMENTS, ge=0)
    """Values one input of one request may carry (product of its shape); more is a 413. 0 = no limit."""

    def request_limits(self) -> RequestLimits:
        return RequestLimits(max_rows=self.max_request_rows, max_elements=self.max_request_elements)

    verify_weights: bool = True
    """Check the CRC-32 of every member of a zip-based weights file (pickle, TorchScript, pt2 and the
    archives inside it) before the model is built: a damaged copy fails the load instead of serving
    wrong values. One streaming read of the file (docs/operations.md gives the cost per GB); turn it
    off only for a store you trust."""

    allow_pickle: bool = True
    """Load pickled `model.pth` files (MLflow 1.x/2.x). `false` refuses them before anything is
    unpickled, and loads pt2 weights-only; pt2 and TorchScript still load (see docs/operations.md)."""


def load_settings(extra: dict[str, Any] | None) -> TorchFlowSettings:
    """Build the settings once per model; a bad value fails the load with the key that is wrong.

    `parameters.extra` wins over the environment, also across `device` / `devices`: naming one of
    them in `extra` sets the other to unset, so a runtime-wide env var does not clash with it.
    """
    kwargs = dict(extra or {})
    for key, env in _MOVED.items():
        if key in kwargs or f"{ENV_PREFIX}{key.upper()}" in os.environ:
            raise ModelLoadError(
                f"{key} is a server setting, the same for every model in the process: set the "
                f"environment variable {env} instead of the model's {key} (parameters.extra or "
                f"{ENV_PREFIX}{key.upper()})."
            )
    for one, other in (("device", "devices"), ("devices", "device")):
        if one in kwargs and other not in kwargs:
            kwargs[other] = None
    try:
        settings = TorchFlowSettings(**kwargs)
    except ValidationError as err:
        raise ModelLoadError(
            f"invalid TorchFlow settings ({problems(err)}). Set them in model-settings.json "
            f"`parameters.extra` or as {ENV_PREFIX}<KEY> environment variables; docs/settings.md "
            "lists them."
        ) from err
    return settings
