"""The per-process settings, `ServerSettings`: one REST app and one log stream serve every model, so
these are `MLSERVER_TORCHFLOW_<KEY>` environment variables only, built once by `server_settings`."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ..errors import ModelLoadError

SERVER_ENV_PREFIX = "MLSERVER_TORCHFLOW_"
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024


class ServerSettings(BaseSettings):
    """Process-wide knobs (one REST app and one log stream serve every model)."""

    model_config = SettingsConfigDict(
        env_prefix=SERVER_ENV_PREFIX, extra="ignore", frozen=True, use_attribute_docstrings=True
    )

    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=0)
    """REST bodies above this (declared, streamed or gunzipped) get a 413; 0 = no cap."""

    log_format: Literal["text", "json"] | None = None
    """`json`: the runtime's log lines become one JSON object each. Unset: MLServer's use_structured_logging."""

    restricted_apis: str = ""
    """Comma-separated API groups that need `restricted_header` (or are off without it), over REST and gRPC:
    `model-repository` (index, load, unload) and `statistics`. Empty: open, as MLServer has them."""

    restricted_header: str = ""
    """`key=value`: the header (gRPC: metadata) a request to a restricted API must carry. Empty: the
    restricted APIs are off for everyone."""

    model_cache: str = ""
    """Writable folder where remote model URIs (`models:/`, `runs:/`, `s3://`, ...) are downloaded, one
    entry per resolved version, reused across restarts. Empty: `~/.cache/mlserver-torchflow`. Never
    the model folder (in a pod, mount an emptyDir here to keep it across container restarts)."""

    torch_threads: int = Field(default=0, ge=0)
    """Intra-op threads of torch's CPU kernels, for every model in the process; 0 = the usable cores
    (affinity, capped by the cgroup CPU quota) less one, at least 1: the event loop keeps a core."""

    torch_interop_threads: int = Field(default=0, ge=0)
    """torch's inter-op pool (TorchScript forks, parallel ops); 0 = torch's default."""

    rest_fast_lane: bool = True
    """`POST .../infer` through MLServer's middleware (errors, gzip, its Prometheus metrics, exception
    handlers) without its router and FastAPI's route machinery, a third of the event loop's time per
    request (patches/fast_lane.py). Off, or with CORS or tracing on: MLServer's full path."""

    grpc_fast_lane: bool = True
    """gRPC `ModelInfer` for a model of this runtime in the server's own process without MLServer's pydantic
    round trip: the protobuf request read straight into arrays and the response written from them, with
    MLServer's metrics, CloudEvents trailing metadata and error codes (serving/grpc_lane.py). Off, with
    metrics off, the response cache on, or parallel workers: MLServer's path."""

    gc_freeze: bool = True
    """After each load, move what the process holds out of the garbage collector's full passes
    (`gc.freeze`), which otherwise stop every request for ~200 ms every few seconds under load;
    an unload makes the old model collectable again. docs/operations.md has the measurement."""

    drain_timeout: float = Field(default=25.0, gt=0)
    """Seconds a SIGTERM leaves accepted requests to be answered before the process exits; keep it below
    the pod's termination grace period (Kubernetes' default: 30). Requests still queued one second before
    it get a retryable 503."""

    @field_validator("restricted_apis")
    @classmethod
    def _known_groups(cls, value: str) -> str:
        unknown = [g for g in _groups(value) if g not in API_GROUPS]
        if unknown:
            raise ValueError(f"unknown API group(s) {unknown}; the groups are {list(API_GROUPS)}")
        return value

    @field_validator("restricted_header")
    @classmethod
    def _key_value(cls, value: str) -> str:
        if value and ("=" not in value or not value.partition("=")[0].strip()):
            raise ValueError("must be key=value, e.g. x-admin-key=<a secret>")
        return value

    def restricted(self) -> frozenset[str]:
        return frozenset(_groups(self.restricted_apis))

    def cache_dir(self) -> Path:
        return Path(self.model_cache or "~/.cache/mlserver-torchflow").expanduser()


def child_environment(defaults: dict[str, str]) -> dict[str, str]:
    """The environment for a child process: this one's, with `defaults` for the keys it lacks."""
    return {**defaults, **os.environ}


API_GROUPS = ("model-repository", "statistics")


def _groups(value: str) -> list[str]:
    return [g.strip() for g in value.split(",") if g.strip()]


@functools.lru_cache(maxsize=1)
def server_settings() -> ServerSettings:
    """Built once per process, on the first model's construction; a bad value fails that load."""
    try:
        return ServerSettings()
    except ValidationError as err:
        raise ModelLoadError(
            f"invalid server settings ({problems(err)}). Fix the {SERVER_ENV_PREFIX}<KEY> environment "
            "variables; docs/settings.md lists them."
        ) from err


def problems(err: ValidationError) -> str:
    """Each failed field and why, on one line (both scopes' load errors name the key that is wrong)."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in err.errors())
