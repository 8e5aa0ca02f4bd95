"""The only module that touches `torch.cuda`: device choice, precision, syncs, memory and its stats."""

from __future__ import annotations

import contextlib
import gc
import os
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ModelLoadError

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(setting: str) -> torch.device:
    """`auto` picks CUDA when present; an explicit CUDA request without CUDA is a load error."""
    if setting == "auto":  # indexed (cuda:0), like an explicit `cuda`: one label, one current device
        return resolve_device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(setting)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError(
                f"device {setting!r} was requested but CUDA is not available here (torch "
                f"{torch.__version__}, built with CUDA {torch.version.cuda or 'none'}). Set device to "
                "`auto` or `cpu`, or run on a GPU node with a CUDA build of torch (the GPU image) and "
                "an `nvidia.com/gpu` limit."
            )
        count = torch.cuda.device_count()
        index = 0 if device.index is None else device.index
        if index >= count:
            raise ModelLoadError(
                f"device {setting!r} was requested but only {count} CUDA device(s) are visible "
                f"(cuda:0 to cuda:{count - 1}). Pick one of those, or `cuda`."
            )
        device = torch.device("cuda", index)
    return device


def bind_thread(device: torch.device) -> None:
    """First thing on a thread that runs a model: the process's intra-op thread count applies here too,
    and `device` is its current CUDA device (calls without a device, a synchronize inside inductor, say,
    then act on the copy's own GPU, not on GPU 0).

    The thread count is per thread (OpenMP's and MKL's): a new thread starts with OpenMP's default, every
    core, until an ATen parallel op first reads torch's setting, and a load runs ops that do not (unpickling
    a module). Its passes then run a team of every core whose workers spin at the barrier after each one:
    on 2 cores with `torch_threads` 1, 0.8 of a core spent spinning and the batched MLP at 2/3 of its
    throughput (docs/operations.md)."""
    torch.set_num_threads(torch.get_num_threads())  # get_ reads the process's setting; set_ applies it here
    if device.type == "cuda":
        torch.cuda.set_device(device)


def resolve_devices(device: str | None, devices: tuple[str, ...] | None) -> list[torch.device]:
    """One device per model copy: `devices` (`all` = every visible GPU), else the single `device`."""
    if devices is None:
        return [resolve_device(device or "auto")]
    if devices == ("all",):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ModelLoadError(
                f"devices `all` was requested but no CUDA device is visible (torch {torch.__version__}, "
                f"built with CUDA {torch.version.cuda or 'none'}). Run on a GPU node with the GPU image "
                "and an `nvidia.com/gpu` limit, or list the devices (`cpu` for CPU copies)."
            )
        return [torch.device("cuda", i) for i in range(count)]
    return [resolve_device(d) for d in devices]


def target_dtype(setting: str) -> torch.dtype | None:
    """None keeps the saved precision."""
    return _DTYPES.get(setting)


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def release(device: torch.device) -> None:
    """Give the memory of an unloaded model back: the caching allocator keeps it otherwise."""
    gc.collect()
    if device.type == "cuda" and torch.cuda.is_available():
        with torch.cuda.device(device):
            torch.cuda.empty_cache()


def is_out_of_memory(err: BaseException) -> bool:
    """A CUDA OOM, or the CPU allocator failing: both mean "try fewer rows". An allocation that fails
    inside a CUDA-graph capture or instantiation comes back as a plain RuntimeError naming CUDA's
    error (`CUDA error: out of memory`, `cudaErrorMemoryAllocation`), not as OutOfMemoryError."""
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and any(sign in str(err) for sign in _OOM_SIGNS)


_OOM_SIGNS = ("can't allocate memory", "CUDA error: out of memory", "cudaErrorMemoryAllocation")


def after_out_of_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def memory_in_use(device: torch.device) -> int:
    """Bytes held on the device: the caching allocator's on CUDA, the process's resident set on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work on every stream (copies included); nothing to wait for on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Lanes:
    """One model copy's CUDA streams, `in`, `compute` and `out`, and the events that order them.
    Elsewhere there are none: each step runs at once, in order, and every event is already done."""

    NAMES = ("in", "compute", "out")

    def __init__(self, device: torch.device, serial_out: bool = False) -> None:
        self.cuda = device.type == "cuda"
        self._streams = {n: torch.cuda.Stream(device) for n in self.NAMES} if self.cuda else {}
        if self.cuda and serial_out:  # the copy out in the compute stream's order (see Transfers)
            self._streams["out"] = self._streams["compute"]

    def on(self, lane: str) -> contextlib.AbstractContextManager[Any]:
        """Work queued inside runs on `lane`'s stream."""
        return torch.cuda.stream(self._streams[lane]) if self.cuda else contextlib.nullcontext()

    def mark(self, lane: str, timing: bool = False) -> Any:
        """An event at the current end of `lane`'s work (None off CUDA: nothing is pending)."""
        if not self.cuda:
            return None
        event = torch.cuda.Event(enable_timing=timing)
        event.record(self._streams[lane])
        return event

    def wait(self, lane: str, event: Any) -> None:
        """`lane`'s later work starts after `event` (the host does not wait)."""
        if event is not None:
            self._streams[lane].wait_event(event)

    def keep(self, tensor: torch.Tensor, lane: str) -> None:
        """The allocator must not reuse `tensor`'s memory before `lane`'s work queued so far is done."""
        if self.cuda and tensor.is_cuda:
            tensor.record_stream(self._streams[lane])

    @staticmethod
    def wait_host(event: Any) -> None:
        """Block this thread (not the GIL: CUDA's wait releases it) until `event` is done."""
        if event is not None:
            event.synchronize()

    @staticmethod
    def elapsed(start: Any, end: Any) -> float | None:
        """Seconds on the device between two timing events that are done; None off CUDA."""
        if start is None or end is None:
            return None
        return float(start.elapsed_time(end)) / 1000.0


_TF32: dict[str, bool] = {}  # model -> its tf32 choice, for the models that made one


def set_math_flags(model: str, cudnn_benchmark: bool, tf32: str) -> str | None:
    """Apply a model's choices of CUDA's per-process math flags. `cudnn_benchmark` only turns the
    autotuner on, never off (another model may rely on it). Returns a warning when another model made
    the other TF32 choice: the flag is per process, so the last load wins for both."""
    if cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    if tf32 == "keep":
        return None
    allow = tf32 == "on"
    torch.backends.cuda.matmul.allow_tf32 = allow
    torch.backends.cudnn.allow_tf32 = allow
    others = sorted(m for m, v in _TF32.items() if v != allow and m != model)
    _TF32[model] = allow
    if not others:
        return None
    return (
        f"model {model} sets tf32 {tf32}, and {', '.join(others)} chose otherwise: TF32 is one switch "
        "per process, so every model here now runs with tf32 " + tf32
    )


@dataclass(frozen=True)
class DeviceStats:
    """What the metrics report for one device; None = not measurable here (the sample is omitted)."""

    in_use: int
    allocated: int | None = None
    reserved: int | None = None
    utilization: float | None = None


def device_stats(device: torch.device) -> DeviceStats:
    """Allocator bytes on CUDA (and utilisation where NVML answers); the process's RSS on CPU."""
    if device.type != "cuda":
        return DeviceStats(in_use=memory_in_use(device))
    allocated = int(torch.cuda.memory_allocated(device))
    return DeviceStats(
        in_use=allocated,
        allocated=allocated,
        reserved=int(torch.cuda.memory_reserved(device)),
        utilization=_utilization(device),
    )


def _utilization(device: torch.device) -> float | None:
    """Percent of time a kernel ran, from NVML: needs `pynvml` (nvidia-ml-py), else None."""
    try:
        return float(torch.cuda.utilization(device))
    except Exception:  # no pynvml, no NVML driver library, or MIG/unsupported: omit the sample
        return None
