"""One forward pass: arrays in, named arrays out. Runs on the model's executor thread, never the loop."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from .codec import output_names
from .device import after_out_of_memory, is_out_of_memory, to_device
from .errors import ModelExecutionError
from .signature import Interface

logger = logging.getLogger("mlserver.torchflow")


class Predictor:
    def __init__(self, module: Any, device: torch.device, dtype: torch.dtype | None, interface: Interface):
        self.module = module
        self.device = device
        self.interface = interface
        # Floating inputs follow the weights' precision, whatever float type the client sent.
        self.float_dtype = dtype or _weights_float_dtype(module)

    def run(self, arrays: list[np.ndarray]) -> list[tuple[str, np.ndarray]]:
        # inference_mode is thread-local (FACTS §1): it must be entered on the thread that computes.
        try:
            with torch.inference_mode():
                tensors = [self._to_device(a) for a in arrays]
                outputs = self.module(*tensors)
                return self._collect(outputs)
        except Exception as err:
            if is_out_of_memory(err):
                after_out_of_memory(self.device)
            raise

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(array)
        if tensor.is_floating_point() and self.float_dtype is not None:
            tensor = tensor.to(self.float_dtype)
        return to_device(tensor, self.device)

    def _collect(self, outputs: Any) -> list[tuple[str, np.ndarray]]:
        names = output_names(outputs, self.interface)
        if isinstance(outputs, dict):
            values = list(outputs.values())
        elif isinstance(outputs, tuple | list):
            values = list(outputs)
        else:
            values = [outputs]
        return [(name, _to_numpy(name, value)) for name, value in zip(names, values, strict=False)]


def _to_numpy(name: str, value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach()
        if value.dtype == torch.bfloat16:  # V2 (and numpy) have no BF16
            value = value.float()
        return value.cpu().numpy()
    if isinstance(value, np.ndarray | int | float | bool):
        return np.asarray(value)
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
