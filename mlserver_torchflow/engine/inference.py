"""One forward pass: arrays in, named arrays out. Runs on the model's threads, never the loop."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..common import Named, logger
from ..errors import ModelExecutionError
from ..protocol.signature import Interface
from .device import after_out_of_memory, is_out_of_memory, synchronize
from .precision import Precision
from .transfers import Slot, Transfers

MAX_SHAPES = 1024  # input shape sets remembered for counting CUDA-graph recordings


class Predictor:
    """A model copy's forward passes. On a device that stages (transfers.py), a pass is two steps:
    `launch` queues it on the executor thread and `finish` collects it on the collector thread, so the
    executor thread can stage the next batch while this one computes. `run` does both in turn."""

    def __init__(
        self,
        module: Any,
        device: torch.device,
        dtype: torch.dtype | None,
        interface: Interface,
        precision: str = "cast",
        channels_last: bool = False,
        cuda_graphs: bool = False,
        on_recording: Callable[[], None] | None = None,
    ):
        self.module = module
        self.device = device
        self.interface = interface
        self.precision = Precision(precision, dtype)
        # Floating inputs follow the weights' precision, whatever float type the client sent.
        self.float_dtype = self.precision.input_dtype(_weights_float_dtype(module))
        self.transfers = Transfers(device, channels_last=channels_last, serial_out=cuda_graphs)
        # CUDA graphs: inductor records one graph per new set of input shapes, which no recompile
        # counter sees; the shapes seen so far, and who is told of a new one once `ready`.
        self._shapes: set[tuple[tuple[int, ...], ...]] | None = set() if cuda_graphs else None
        self._on_recording = on_recording
        self.ready = False

    @property
    def pipelined(self) -> bool:
        return self.transfers.copies

    def run(self, arrays: list[np.ndarray]) -> Named:
        """One pass over `arrays`, on the calling thread (warm-ups, the CPU path)."""
        return self.finish(self.launch([arrays], None))

    def launch(self, parts: list[list[np.ndarray]], rows: int | None) -> Launched:
        """Queue a pass over every request's inputs (`parts`), padded to `rows`; returns what `finish`
        completes. Off CUDA the pass has run by the time this returns."""
        if self._shapes is not None:
            self._note_shapes(parts, rows)
        slot = self.transfers.acquire() if self.pipelined else None
        try:
            return self._launch(slot, parts, rows)
        except Exception as err:
            self._settle(slot)
            if not is_out_of_memory(err):
                raise
            failure = err.with_traceback(None)
        raise self._out_of_memory(failure)

    def _launch(self, slot: Slot | None, parts: list[list[np.ndarray]], rows: int | None) -> Launched:
        # inference_mode and autocast are thread-local: entered on the thread that computes.
        with torch.inference_mode(), self.transfers.lanes.on("compute"):
            tensors = self.transfers.to_device(slot, parts, rows, self.float_dtype)
            with self.precision.context(self.device):
                outputs = self.module(*tensors)
            return self._start_out(slot, outputs)

    def _note_shapes(self, parts: list[list[np.ndarray]], rows: int | None) -> None:
        assert self._shapes is not None
        shapes = tuple(a.shape if rows is None else (rows, *a.shape[1:]) for a in parts[0])
        if shapes in self._shapes or len(self._shapes) >= MAX_SHAPES:
            return
        self._shapes.add(shapes)
        if self.ready:
            logger.warning(
                "a CUDA graph is being recorded for input shapes %s, which no warm-up size covered: "
                "this pass pays the capture and the graph keeps its own memory. Add the row count to "
                "preferred_batch_sizes.",
                list(shapes),
            )
            if self._on_recording is not None:
                self._on_recording()

    def _start_out(self, slot: Slot | None, outputs: Any) -> Launched:
        names = self.interface.output_names(outputs)
        if isinstance(outputs, dict):
            values = list(outputs.values())
        elif isinstance(outputs, tuple | list):
            values = list(outputs)
        else:
            values = [outputs]
        for name, value in zip(names, values, strict=True):
            _check_type(name, value)
        # Every tensor comes back to the host in one go: one wait per batch, not one per output.
        tensors = [v.detach() for v in values if isinstance(v, torch.Tensor)]
        staged = self.transfers.start_out(slot, tensors)
        dtypes = [self.precision.output_dtype(t.dtype) for t in tensors]
        return Launched(slot, names, values, staged, dtypes)

    def finish(self, launched: Launched) -> Named:
        """The pass's outputs as arrays the caller owns, once its copies are done."""
        try:
            with torch.inference_mode():
                hosts = iter(self.transfers.finish(launched.slot, launched.staged, launched.dtypes))
                launched.device_seconds = self.transfers.device_seconds(launched.slot)
        except Exception as err:
            launched.values = launched.staged = []  # the device tensors go before the cache is emptied
            self._settle(launched.slot)
            if not is_out_of_memory(err):
                raise
            failure = err.with_traceback(None)
        else:
            if launched.slot is not None:
                self.transfers.release(launched.slot)
            return [
                (name, next(hosts).numpy() if isinstance(value, torch.Tensor) else np.asarray(value))
                for name, value in zip(launched.names, launched.values, strict=True)
            ]
        raise self._out_of_memory(failure)

    def _settle(self, slot: Slot | None) -> None:
        """After a failed pass: its copies in and out of the pinned staging may still be queued, so the
        device is waited for before the slot is free for the next pass (a retry, the requests one by
        one), which must not overwrite them under the device's feet."""
        with contextlib.suppress(Exception):  # a sticky CUDA error: the retry will report it
            synchronize(self.device)
        if slot is not None:
            self.transfers.release(slot)

    def _out_of_memory(self, failure: Exception) -> Exception:
        """Out of memory: the failed pass's frames, which held its device tensors, went with the
        traceback, so the cache is emptied of them before the batcher retries with fewer rows."""
        after_out_of_memory(self.device)
        return failure


@dataclass(eq=False)
class Launched:
    """A pass queued on the device: its slot, outputs (device tensors until finished) and copies."""

    slot: Slot | None
    names: list[str]
    values: list[Any]
    staged: list[torch.Tensor]
    dtypes: list[torch.dtype]
    device_seconds: float | None = None  # compute and copy out on the device, once finished (CUDA)


def _check_type(name: str, value: Any) -> None:
    if not isinstance(value, torch.Tensor | np.ndarray | int | float | bool):
        raise ModelExecutionError(
            f"the model returned {type(value).__name__} for output {name!r}; TorchFlowRuntime serves "
            "tensors, or tuples, lists and dicts of tensors."
        )


def _weights_float_dtype(module: Any) -> torch.dtype | None:
    tensors = []
    for attr in ("parameters", "buffers"):
        getter = getattr(module, attr, None)
        if callable(getter):
            tensors += list(getter())
    return next((t.dtype for t in tensors if t.is_floating_point()), None)
