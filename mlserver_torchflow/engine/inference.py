"""One forward pass: arrays in, named arrays out. Runs on the model's executor thread, never the loop."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch

from ..common import Named
from ..errors import ModelExecutionError
from ..protocol.signature import Interface
from .device import after_out_of_memory, is_out_of_memory, synchronize
from .precision import Precision
from .transfers import Transfers


class Predictor:
    def __init__(
        self,
        module: Any,
        device: torch.device,
        dtype: torch.dtype | None,
        interface: Interface,
        precision: str = "cast",
    ):
        self.module = module
        self.device = device
        self.interface = interface
        self.precision = Precision(precision, dtype)
        # Floating inputs follow the weights' precision, whatever float type the client sent.
        self.float_dtype = self.precision.input_dtype(_weights_float_dtype(module))
        self.transfers = Transfers(device)

    def run(self, arrays: list[np.ndarray]) -> Named:
        try:
            return self._run(arrays)
        except Exception as err:
            # The failed pass's copies out of the pinned staging buffers may still be queued: the next
            # pass (a retry, the requests one by one) must not overwrite them under the device's feet.
            _settle(self.device)
            if not is_out_of_memory(err):
                raise
            failure = err.with_traceback(None)
        # Out of memory: the failed pass's frames, which hold its device tensors, went with the
        # traceback, so the cache is emptied of them before the batcher retries with fewer rows.
        after_out_of_memory(self.device)
        raise failure

    def _run(self, arrays: list[np.ndarray]) -> Named:
        # inference_mode and autocast are thread-local: entered on the thread that computes.
        with torch.inference_mode():
            tensors = self.transfers.to_device([torch.from_numpy(a) for a in arrays], self.float_dtype)
            with self.precision.context(self.device):
                outputs = self.module(*tensors)
            return self._collect(outputs)

    def _collect(self, outputs: Any) -> Named:
        names = self.interface.output_names(outputs)
        if isinstance(outputs, dict):
            values = list(outputs.values())
        elif isinstance(outputs, tuple | list):
            values = list(outputs)
        else:
            values = [outputs]
        for name, value in zip(names, values, strict=True):
            _check_type(name, value)
        # Every tensor comes back to the host in one go: one sync per batch, not one per output.
        tensors = [v.detach() for v in values if isinstance(v, torch.Tensor)]
        hosts = iter(self.transfers.to_host(tensors, [self.precision.output_dtype(t.dtype) for t in tensors]))
        return [
            (name, next(hosts).numpy() if isinstance(value, torch.Tensor) else np.asarray(value))
            for name, value in zip(names, values, strict=True)
        ]


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


def _settle(device: torch.device) -> None:
    """Wait for the device's queued work after a failed pass; a device too broken to sync raises later."""
    with contextlib.suppress(Exception):  # a sticky CUDA error: the retry will report it
        synchronize(device)
