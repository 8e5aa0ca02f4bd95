"""Reduced precision, two ways: cast the weights (`cast`), or keep fp32 weights and let
`torch.autocast` pick a precision per op (`autocast`). Results keep the interface's datatypes."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

# What numpy and V2 can carry back for each reduced float: BF16 exists in neither.
_WIDER = {torch.bfloat16: torch.float32, torch.float16: torch.float32}


@dataclass(frozen=True)
class Precision:
    """`dtype` None = the saved precision, untouched."""

    mode: str = "cast"
    dtype: torch.dtype | None = None

    @property
    def cast_dtype(self) -> torch.dtype | None:
        """What the weights are cast to at load time (nothing under autocast)."""
        return self.dtype if self.mode == "cast" else None

    def input_dtype(self, weights_dtype: torch.dtype | None) -> torch.dtype | None:
        """Floating inputs follow the weights; under autocast they stay at the weights' fp32."""
        return self.cast_dtype or weights_dtype

    def context(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        """Entered around each forward pass, on the thread that computes (autocast is thread-local).

        Without autocast's weight-cast cache: it lives for one forward pass, so it only saves a cast
        for a weight used several times in a pass, and in torch 2.13 its lock deadlocks against
        dynamo tracing on another thread (two compiled copies warming up at once hung in 3 of 5 runs
        here, 0 of 5 without the cache).
        """
        if self.mode == "autocast" and self.dtype is not None:
            return torch.autocast(device_type=device.type, dtype=self.dtype, cache_enabled=False)
        return contextlib.nullcontext()

    def output_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """Reduced-precision results go back as FP32: a user chose `dtype` for speed, not for a new
        interface (a signature's own FP16 output is cast back to FP16 by the codec). BF16 always
        widens: V2 and numpy have no BF16."""
        if dtype == torch.bfloat16 or (self.dtype is not None and dtype == self.dtype):
            return _WIDER.get(dtype, dtype)
        return dtype
