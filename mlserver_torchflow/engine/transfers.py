"""Host <-> device copies for one model copy: pinned staging reused across batches, one sync per batch.

A non-blocking host-to-device copy needs page-locked (pinned) host memory; `tensor.pin_memory()`
allocates it anew for every batch. Here each input and output slot keeps one pinned buffer that
grows to the largest batch seen, and every output is copied back before a single sync. Reuse is safe
because one executor thread runs a copy's batches one after another, and each batch ends with that
sync: no copy from or into a buffer is still in flight when the next batch writes it, and what
leaves `to_host` is a copy the caller owns.

On CPU nothing is copied: tensors pass through as they are.
"""

from __future__ import annotations

import torch

from .device import synchronize


class StagingBuffers:
    """One flat byte buffer per slot, grown (never shrunk) to the largest tensor it has held."""

    def __init__(self, pin: bool) -> None:
        self.pin = pin
        self._buffers: list[torch.Tensor] = []

    def view(self, slot: int, dtype: torch.dtype, shape: torch.Size) -> torch.Tensor:
        """A tensor of `dtype` and `shape` over slot `slot`'s buffer; valid until the slot's next view."""
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


class Transfers:
    """The copies of one model copy on `device`. `stage` defaults to "not the CPU"; staging on the CPU
    (unpinned, since pinning needs CUDA) runs the GPU path's logic where no GPU is, for its tests."""

    def __init__(self, device: torch.device, pin: bool = True, stage: bool | None = None) -> None:
        self.device = device
        self.copies = device.type != "cpu" if stage is None else stage
        self._inputs = StagingBuffers(pin and self.copies)
        self._outputs = StagingBuffers(pin and self.copies)

    def to_device(self, tensors: list[torch.Tensor], float_dtype: torch.dtype | None) -> list[torch.Tensor]:
        """Floating inputs become `float_dtype` on the host (fewer bytes to copy when it is smaller)."""
        if not self.copies:
            return [_cast(t, float_dtype) for t in tensors]
        moved = []
        for slot, tensor in enumerate(tensors):
            dtype = float_dtype if tensor.is_floating_point() and float_dtype is not None else tensor.dtype
            staged = self._inputs.view(slot, dtype, tensor.shape)
            staged.copy_(tensor)  # converts the dtype in the same pass
            moved.append(staged.to(self.device, non_blocking=True))
        return moved

    def to_host(self, tensors: list[torch.Tensor], dtypes: list[torch.dtype]) -> list[torch.Tensor]:
        """Host tensors of `dtypes` that the caller owns: every output starts its copy back into its
        staging buffer, one sync waits for them all, then each is copied out (and converted) at once."""
        if not self.copies:  # zero-copy unless the dtype changes
            return [t if t.dtype == d else t.to(d) for t, d in zip(tensors, dtypes, strict=True)]
        staged = []
        for slot, tensor in enumerate(tensors):
            if tensor.device.type == "cpu":
                staged.append(tensor)
                continue
            buffer = self._outputs.view(slot, tensor.dtype, tensor.shape)
            buffer.copy_(tensor, non_blocking=True)
            staged.append(buffer)
        synchronize(self.device)
        return [s.to(dtype=d, copy=True) for s, d in zip(staged, dtypes, strict=True)]

    def staged_bytes(self) -> int:
        return self._inputs.nbytes() + self._outputs.nbytes()


def _cast(tensor: torch.Tensor, float_dtype: torch.dtype | None) -> torch.Tensor:
    if float_dtype is not None and tensor.is_floating_point() and tensor.dtype != float_dtype:
        return tensor.to(float_dtype)
    return tensor
