"""The per-model settings of devices, precision and compilation: where the model computes, and how."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, field_validator, model_validator
from pydantic_settings import NoDecode

_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
_REPLICA_DEVICE = re.compile(r"^(cpu|cuda|cuda:\d+)$")
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]


class DeviceSettings(BaseModel):
    """Fields of `TorchFlowSettings` (model.py): devices, precision, compilation."""

    model_config = ConfigDict(use_attribute_docstrings=True)

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
    def _check_combinations(self) -> Self:
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
