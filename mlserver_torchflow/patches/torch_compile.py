"""The real backend behind the runtime's counting torch.compile backend (`engine.compiling`).

`torch.compile(backend="inductor", mode=...)` turns the mode into inductor config through a private
wrapper class; a backend that delegates to inductor with a mode must build the same wrapper, since
there is no public way to hand a mode to a backend object. Other backends come from dynamo's backend
registry by name.
"""

from __future__ import annotations

from typing import Any

import torch
from torch._dynamo.backends.registry import lookup_backend

from .targets import Patch, Target


def real_backend(backend: str, mode: str) -> Any:
    """What `torch.compile(backend=backend, mode=mode)` itself would call for each graph."""
    if backend == "inductor":
        return torch._TorchCompileInductorWrapper(mode, None, None)
    return lookup_backend(backend)


PATCH = Patch(
    name="torch_compile",
    why="delegate from the recompile-counting backend to inductor with the configured mode",
    targets=(
        Target("torch:_TorchCompileInductorWrapper", "torch", ("2.13.0",), "c46bfc67adec"),
        Target("torch._dynamo.backends.registry:lookup_backend", "torch", ("2.13.0",), "3455f9e1cf00"),
    ),
)
