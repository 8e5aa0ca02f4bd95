"""Allocator readings that mean "what the models hold": a comparison of two is only fair once the
process's own CUDA caches are out of the way.

cuBLAS keeps a workspace per handle, and a handle per thread and stream: every copy's new executor thread
that multiplies matrices adds one, and it stays after the model is unloaded. Unreferenced runtimes left by
earlier tests (reference cycles) hold their tensors until a collection. So a reading collects garbage,
waits for the device, clears cuBLAS's workspaces and empties the caching allocator first. On CPU it is 0.
"""

from __future__ import annotations

import gc

import torch


def device_bytes(device: str) -> tuple[int, int]:
    """(allocated, reserved) bytes on the current CUDA device after the caches are cleared; (0, 0) on CPU."""
    if not device.startswith("cuda"):
        return (0, 0)
    gc.collect()
    torch.cuda.synchronize()
    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)  # private; present in 2.11 and 2.13
    if clear is not None:
        clear()
    torch.cuda.empty_cache()
    return torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
