"""The runtime's settings, built once and passed down: nothing else in the package reads `os.environ`.

Two objects, for two scopes:
- `TorchFlowSettings`, per model: `parameters.extra` in model-settings.json first, then
  `MLSERVER_MODEL_TORCHFLOW_<KEY>` environment variables. Built once per load by `load_settings`.
- `ServerSettings`, per process (one REST app and one log stream serve every model):
  `MLSERVER_TORCHFLOW_<KEY>` environment variables. Built once by `server_settings`.

Each field's docstring is its documentation: `docs/settings.md` is generated from them
(`python scripts/settings_doc.py`), and a test checks that the page is current. `BatchConfig` and
`RequestLimits` are the plain views the engine and the protocol take, so neither imports pydantic.
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .errors import ModelLoadError

ENV_PREFIX = "MLSERVER_MODEL_TORCHFLOW_"
SERVER_ENV_PREFIX = "MLSERVER_TORCHFLOW_"
DEFAULT_MAX_ROWS = 65_536
DEFAULT_MAX_ELEMENTS = 16 * 1024 * 1024  # 64 MiB of FP32: matches the 64 MiB body / message caps
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
# Settings that moved from one scope to the other: a model naming one is told where it went.
_MOVED = {"log_format": f"{SERVER_ENV_PREFIX}LOG_FORMAT"}
_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
_REPLICA_DEVICE = re.compile(r"^(cpu|cuda|cuda:\d+)$")
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]


class QueuePolicy(BaseModel):
    """One priority level's queue policy, as Triton's `ModelQueuePolicy`."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    max_queue_size: int = Field(default=0, ge=0)
    """Requests that may wait at this level; more get a 503. 0 = no limit (`max_queue_rows` still holds)."""

    default_timeout_microseconds: int = Field(default=0, ge=0)
    """How long a request may wait at this level before `timeout_action`; 0 = `queue_timeout`."""

    allow_timeout_override: bool = True
    """Whether a request's own `timeout` parameter (microseconds) replaces the default."""

    timeout_action: Literal["reject", "delay"] = "reject"
    """`reject`: a 503, unrun. `delay`: it waits on, behind the requests of its level and above still in time."""

    def view(self) -> LevelPolicy:
        return LevelPolicy(
            max_queue_size=self.max_queue_size,
            default_timeout=self.default_timeout_microseconds / 1e6,
            allow_timeout_override=self.allow_timeout_override,
            delay=self.timeout_action == "delay",
        )


class TorchFlowSettings(BaseSettings):
    """Every knob of the runtime; unknown keys are an error so that a typo never passes silently."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", frozen=True, use_attribute_docstrings=True
    )

    device: str | None = None
    """`auto` (CUDA when present, else CPU), `cpu`, `cuda` or `cuda:N`; unset (and no `devices`) is
    `auto`. Asking for CUDA where there is none is a load error. Weights load straight onto the device
    (`map_location`), so a model saved on a GPU loads on a CPU host. Not together with `devices`."""

    devices: Annotated[tuple[str, ...] | None, NoDecode] = None
    """One model copy per entry: a list (`[0, 1]`, `["cuda:0", "cuda:1"]`, `["cpu", "cpu"]`) or `all`
    (every visible CUDA device; a load error without one); from the environment `0,1`, `all` or a JSON
    list. Each copy has its own thread and batcher; requests go to the copy with the fewest rows
    outstanding. Setting both `device` and `devices` is a load error, except that one named in
    `parameters.extra` overrides the other from the environment."""

    dtype: Literal["keep", "float16", "bfloat16"] = "keep"
    """Compute in this precision (`keep`: as saved); `precision` says how. Results go back as the
    signature's datatypes (bfloat16 and computed float16 as FP32: V2 has no BF16)."""

    precision: Literal["cast", "autocast"] = "cast"
    """`cast`: floating weights and inputs are cast to `dtype` at load. `autocast`: weights stay fp32
    and each forward pass runs under `torch.autocast(device, dtype)` (needs a `dtype`)."""

    channels_last: bool = False
    """Keep the weights and the 4-D floating inputs in channels-last (NHWC) memory order: the layout
    tensor cores' convolutions want, often faster for fp16/bf16 conv nets on a GPU. The same values up
    to the rounding of another algorithm (docs/gpu.md); on CPU each 4-D input costs a host copy."""

    cudnn_benchmark: bool = False
    """Let cuDNN time its algorithms for each new input shape and keep the fastest (per process: on
    for every model here once one turns it on). Fastest with fixed shapes: the warm-up pays the timing
    for its batch sizes, any other row count pays it on its first request (docs/gpu.md)."""

    tf32: Literal["keep", "on", "off"] = "keep"
    """TF32 for FP32 matmuls and convolutions on Ampere and later GPUs (per process): `on` trades a
    10-bit mantissa (a relative error near 1e-3) for up to 8x the FP32 throughput; `off` keeps full
    FP32; `keep` leaves torch's defaults (matmuls off, convolutions on). Not used by fp16/bf16."""

    compile: bool = False
    """`torch.compile` the loaded module (pickle and pt2; TorchScript is a load error) and compile
    every batch size a batch can have before reporting ready (see docs/gpu.md)."""

    compile_mode: CompileMode = "default"
    """torch.compile's mode (inductor only); the CUDA-graph modes fall back to plain kernels on CPU."""

    compile_backend: Literal["inductor", "aot_eager", "eager"] = "inductor"
    """torch.compile's backend: `eager` / `aot_eager` trace without generating code (for debugging)."""

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

    max_batch_size: int = 0
    """Rows per forward pass; above 1 turns on the runtime's own batcher (also read from
    model-settings.json's top level). A request with more rows runs alone, never dropped."""

    max_batch_time: float = 0.0
    """The longest (seconds) a request waits for company once the device could run it (time behind a
    running pass, or behind the writing of its answers, does not count). The dispatcher holds a batch only while more rows are due soon
    enough to pay for the wait: a lone client never waits (docs/batching.md)."""

    preferred_batch_sizes: tuple[int, ...] = ()
    """Pad each batch up to the nearest of these row counts (stable shapes for compile / CUDA graphs)."""

    max_queue_rows: int | None = None
    """Rows allowed to wait; beyond it a request gets a 503. Default: 32 x max_batch_size."""

    queue_timeout: float = 0.0
    """Seconds a request may wait in the queue before it fails with a 503 unrun; 0 = no limit. A
    priority level's `default_timeout_microseconds`, or a request's own `timeout`, takes its place."""

    priority_levels: int = Field(default=0, ge=0)
    """Triton's priority levels: 1 is the highest, served first; 0 = one level (requests' `priority`
    ignored). A request's `priority` parameter picks its level; 0 or one above the levels means
    `default_priority_level`."""

    default_priority_level: int = Field(default=0, ge=0)
    """The level of a request without a (valid) `priority`; 0 = the lowest level (`priority_levels`)."""

    default_queue_policy: QueuePolicy = Field(default_factory=lambda: QueuePolicy())
    """Every level's queue policy (`max_queue_size`, `default_timeout_microseconds`,
    `allow_timeout_override`, `timeout_action`; see docs/batching.md), unless `priority_queue_policy`
    names the level."""

    priority_queue_policy: dict[int, QueuePolicy] = Field(default_factory=dict)
    """Queue policies of single levels, e.g. `{"1": {"max_queue_size": 8}}`."""

    compute_on: Literal["auto", "host", "device"] = "auto"
    """Where the forward pass computes, which sets how many batches may be in flight: `host` (the
    server's own cores: one batch at a time, the next one grows meanwhile), `device` (off them, as a
    GPU: the next batch is handed over just before the running one ends). `auto`: `device` on CUDA;
    elsewhere measured from the pass thread's CPU time (docs/batching.md)."""

    inline_pass_seconds: float = Field(default=0.002, ge=0)
    """A pass the cost fit expects to take at most this long, on a model computing on the server's own
    cores (`compute_on`), runs on the event loop itself rather than on the model's thread, whose hand-off
    and wake-ups cost more than a small CPU model's whole pass (docs/batching.md). 0 = always the
    model's thread. Never with `execution_timeout`."""

    execution_timeout: float = Field(default=0.0, ge=0)
    """Seconds one forward pass may run before its requests get a retryable 503 and this copy is marked
    unhealthy (readiness false) until the pass returns; 0 = no limit. A hung device cannot be interrupted:
    this stops requests from queueing behind it, and tells the orchestrator."""

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

    @model_validator(mode="after")
    def _check_levels(self) -> TorchFlowSettings:
        levels = max(self.priority_levels, 1)
        if self.default_priority_level > levels:
            raise ValueError(
                f"default_priority_level {self.default_priority_level} is above priority_levels ({levels})"
            )
        unknown = [k for k in self.priority_queue_policy if not 1 <= k <= levels]
        if unknown:
            raise ValueError(f"priority_queue_policy names levels {unknown}; the levels are 1 to {levels}")
        return self

    def queue_levels(self) -> tuple[LevelPolicy, ...]:
        count = max(self.priority_levels, 1)
        policies = [self.priority_queue_policy.get(k, self.default_queue_policy) for k in range(1, count + 1)]
        return tuple(p.view() for p in policies)

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
            execution_timeout=self.execution_timeout,
            levels=self.queue_levels(),
            default_level=self.default_priority_level or max(self.priority_levels, 1),
            compute_on=self.compute_on,
            inline_pass_seconds=self.inline_pass_seconds,
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
            f"invalid TorchFlow settings ({_problems(err)}). Set them in model-settings.json "
            f"`parameters.extra` or as {ENV_PREFIX}<KEY> environment variables; docs/settings.md "
            "lists them."
        ) from err
    return settings


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
            f"invalid server settings ({_problems(err)}). Fix the {SERVER_ENV_PREFIX}<KEY> environment "
            "variables; docs/settings.md lists them."
        ) from err


def _problems(err: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in err.errors())


@dataclass(frozen=True)
class LevelPolicy:
    """What the queue needs of one level's policy (seconds; 0 = none)."""

    max_queue_size: int = 0
    default_timeout: float = 0.0
    allow_timeout_override: bool = True
    delay: bool = False


@dataclass(frozen=True)
class BatchConfig:
    """What the batcher needs of the settings."""

    max_batch_size: int
    max_batch_time: float
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_rows: int = 0
    queue_timeout: float = 0.0
    execution_timeout: float = 0.0
    levels: tuple[LevelPolicy, ...] = (LevelPolicy(),)
    default_level: int = 1
    compute_on: str = "auto"
    inline_pass_seconds: float = 0.0


@dataclass(frozen=True)
class RequestLimits:
    """What the codec needs of the settings: per-request bounds, 0 = off."""

    max_rows: int = DEFAULT_MAX_ROWS
    max_elements: int = DEFAULT_MAX_ELEMENTS
