"""Host <-> device copies for one model copy, pipelined across batches.

Each copy has three CUDA streams (in, compute, out) and two staging slots; a slot holds one pinned
buffer per input and per output, grown (never shrunk) to the largest batch it has held. A batch
takes a free slot on the copy's executor thread and writes each request's rows straight into the
slot's pinned inputs: the only host copy of the batch, with the padding zeroed there (`to_device`).
The copy in runs on the in stream, the forward on the compute stream once that copy is done, the
copy out into the slot's pinned outputs on the out stream once the forward is (`start_out`). The
thread is then free to stage the next batch, whose copy in overlaps this batch's compute while the
previous batch's copy out drains (in CUDA-graph modes the copy out stays in the compute stream's
order: a replay writes its outputs where the last one did). `finish`, on the copy's collector
thread, waits for the slot's last event (the GIL released), copies the outputs into arrays the
caller owns and frees the slot.
A third batch waits for a free slot: no buffer is written while a copy may still read it.

On CPU nothing is staged: the rows are joined and pass through as they are. Staging on the CPU
(`stage=True`: unpinned, no streams, each step runs at once) runs this bookkeeping where no GPU is,
for its tests; the outputs still wait in their slot until `finish`, as on a GPU.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import torch

from .device import Lanes
from .merging import concatenate

SLOTS = 2  # batches staged or in flight at once on one copy: one computing, one copying in


class StagingBuffers:
    """One flat byte buffer per slot, grown (never shrunk) to the largest tensor it has held."""

    def __init__(self, pin: bool) -> None:
        self.pin = pin
        self._buffers: list[torch.Tensor] = []

    def view(self, slot: int, dtype: torch.dtype, shape: Sequence[int]) -> torch.Tensor:
        """A tensor of `dtype` and `shape` over slot `slot`'s buffer; valid until the slot's next view."""
        shape = torch.Size(shape)
        nbytes = shape.numel() * torch.empty((), dtype=dtype).element_size()
        while len(self._buffers) <= slot:
            self._buffers.append(torch.empty(0, dtype=torch.uint8))
        if self._buffers[slot].numel() < nbytes:
            # Doubling keeps a slowly growing batch size from reallocating on every batch.
            size = max(nbytes, 2 * self._buffers[slot].numel())
            self._buffers[slot] = torch.empty(size, dtype=torch.uint8, pin_memory=self.pin)
        return self._buffers[slot][:nbytes].view(dtype).view(shape)

    def nbytes(self) -> int:
        return sum(b.numel() for b in self._buffers)


class Slot:
    """One batch's staging: its pinned inputs and outputs, and the event that ends its copy out."""

    def __init__(self, index: int, pin: bool) -> None:
        self.index = index
        self.inputs = StagingBuffers(pin)
        self.outputs = StagingBuffers(pin)
        self.started: object | None = None  # the compute stream's event once the copy in is done
        self.done: object | None = None  # the out stream's event after the batch's last copy


class Transfers:
    """The copies of one model copy on `device`. `stage` defaults to "not the CPU"."""

    def __init__(
        self,
        device: torch.device,
        pin: bool = True,
        stage: bool | None = None,
        channels_last: bool = False,
        serial_out: bool = False,
    ) -> None:
        self.device = device
        self.copies = device.type != "cpu" if stage is None else stage
        self.channels_last = channels_last
        self.serial_out = serial_out
        # CUDA graphs replay into the same output memory every time: a copy out on its own stream
        # would race the next batch's replay, so it runs in the compute stream's order there.
        self.lanes = Lanes(device if self.copies else torch.device("cpu"), serial_out)
        pinned = pin and self.copies and device.type == "cuda"
        self._slots = [Slot(i, pinned) for i in range(SLOTS)]
        self._free = list(self._slots)
        self._changed = threading.Condition()

    def acquire(self) -> Slot:
        """A free slot, waiting for the oldest batch in flight to be finished if none is."""
        with self._changed:
            self._changed.wait_for(lambda: bool(self._free))
            return self._free.pop(0)

    def release(self, slot: Slot) -> None:
        with self._changed:
            slot.started = slot.done = None
            self._free.append(slot)
            self._changed.notify()

    def to_device(
        self,
        slot: Slot | None,
        parts: list[list[np.ndarray]],
        rows: int | None,
        float_dtype: torch.dtype | None,
    ) -> list[torch.Tensor]:
        """Each input's rows from every request, zero-padded to `rows` (None: one request's inputs as
        they are), on the device. Called on the compute lane: the tensors are ready in its order.
        Floating inputs become `float_dtype` while they are written (fewer bytes to copy when smaller)."""
        if not self.copies:
            joined = parts[0] if rows is None else concatenate(parts, rows)
            return [self._layout(_cast(torch.from_numpy(a), float_dtype)) for a in joined]
        assert slot is not None, "a staging device's pass needs a slot (Transfers.acquire)"
        staged = [
            self._write(slot, k, [p[k] for p in parts], rows, float_dtype) for k in range(len(parts[0]))
        ]
        with self.lanes.on("in"):
            moved = [s.to(self.device, non_blocking=True) for s in staged]
            copied = self.lanes.mark("in")
        self.lanes.wait("compute", copied)
        slot.started = self.lanes.mark("compute", timing=True)
        for tensor in moved:  # allocated in the in stream's order, read in the compute stream's
            self.lanes.keep(tensor, "compute")
        return [self._layout(t) for t in moved]

    def _write(
        self, slot: Slot, k: int, arrays: list[np.ndarray], rows: int | None, float_dtype: torch.dtype | None
    ) -> torch.Tensor:
        first = torch.from_numpy(arrays[0])
        dtype = float_dtype if first.is_floating_point() and float_dtype is not None else first.dtype
        if rows is None:  # one request, unbatched: its input as it is (a scalar, say)
            staged = slot.inputs.view(k, dtype, first.shape)
            staged.copy_(first)
            return staged
        staged = slot.inputs.view(k, dtype, (rows, *arrays[0].shape[1:]))
        offset = 0
        for array in arrays:
            count = int(array.shape[0])
            staged[offset : offset + count].copy_(torch.from_numpy(array))  # converts the dtype too
            offset += count
        if offset < rows:
            staged[offset:].zero_()
        return staged

    def _layout(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.channels_last and tensor.ndim == 4 and tensor.is_floating_point():
            return tensor.contiguous(memory_format=torch.channels_last)
        return tensor

    def start_out(self, slot: Slot | None, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Queue every output's copy into the slot's pinned outputs, after the forward; returns the
        staged tensors, which hold the values once `finish` has waited."""
        if slot is None:  # not staged: the outputs are on the host already
            return tensors
        computed = self.lanes.mark("compute")
        self.lanes.wait("out", computed)
        staged = []
        with self.lanes.on("out"):
            for k, tensor in enumerate(tensors):
                if tensor.device.type == "cpu" and self.lanes.cuda:  # a CUDA model's host output
                    staged.append(tensor)
                    continue
                self.lanes.keep(tensor, "out")  # made in the compute stream's order, read in this one's
                buffer = slot.outputs.view(k, tensor.dtype, tensor.shape)
                buffer.copy_(tensor, non_blocking=True)
                staged.append(buffer)
            slot.done = self.lanes.mark("out", timing=True)
        return staged

    def finish(
        self, slot: Slot | None, staged: list[torch.Tensor], dtypes: list[torch.dtype]
    ) -> list[torch.Tensor]:
        """Host tensors of `dtypes` that the caller owns, once the slot's copies are done."""
        if slot is None:  # zero-copy unless the dtype changes
            return [t if t.dtype == d else t.to(d) for t, d in zip(staged, dtypes, strict=True)]
        self.lanes.wait_host(slot.done)
        return [s.to(dtype=d, copy=True) for s, d in zip(staged, dtypes, strict=True)]

    def device_seconds(self, slot: Slot | None) -> float | None:
        """The batch's compute and copy out on the device (CUDA's events), once finished; None off CUDA."""
        return None if slot is None else self.lanes.elapsed(slot.started, slot.done)

    def staged_bytes(self) -> int:
        return sum(s.inputs.nbytes() + s.outputs.nbytes() for s in self._slots)


def _cast(tensor: torch.Tensor, float_dtype: torch.dtype | None) -> torch.Tensor:
    if float_dtype is not None and tensor.is_floating_point() and tensor.dtype != float_dtype:
        return tensor.to(float_dtype)
    return tensor
