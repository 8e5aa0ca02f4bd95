"""The real backend behind the runtime's counting torch.compile backend (`engine.compiling`), and the
CUDA-graph state of the executor threads that run compiled models.

`torch.compile(backend="inductor", mode=...)` turns the mode into inductor config through a private
wrapper class; a backend that delegates to inductor with a mode must build the same wrapper, since
there is no public way to hand a mode to a backend object. Other backends come from dynamo's backend
registry by name.

Inductor keeps its CUDA-graph trees in thread-local state set up on the thread that first imported it;
before torch 2.13 (pytorch issue 123177, fixed June 2026) any other thread fails `assert
torch._C._is_key_in_tls(...)` in `get_obj`. Every model copy computes on its own new thread, so each
sets that state up itself (`cudagraph_thread_state`), as `get_obj` does lazily from 2.13 on.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

import torch
from torch._dynamo.backends.registry import lookup_backend

from .targets import Patch, Target


def real_backend(backend: str, mode: str) -> Any:
    """What `torch.compile(backend=backend, mode=mode)` itself would call for each graph."""
    if backend == "inductor":
        return torch._TorchCompileInductorWrapper(mode, None, None)
    return lookup_backend(backend)


def cudagraph_thread_state() -> None:
    """Give this thread inductor's CUDA-graph tree state, unless it has it (torch 2.13: `_initialize_tls`)."""
    from torch._inductor import cudagraph_trees

    if torch._C._is_key_in_tls("tree_manager_containers"):
        return
    cudagraph_trees.local.tree_manager_containers = {}
    cudagraph_trees.local.tree_manager_locks = defaultdict(threading.Lock)
    torch._C._stash_obj_in_tls("tree_manager_containers", cudagraph_trees.local.tree_manager_containers)
    torch._C._stash_obj_in_tls("tree_manager_locks", cudagraph_trees.local.tree_manager_locks)


PATCH = Patch(
    name="torch_compile",
    why="delegate from the recompile-counting backend to inductor with the configured mode; set up "
    "inductor's CUDA-graph thread state on each copy's own thread",
    targets=(
        Target("torch:_TorchCompileInductorWrapper", "torch", ("2.13.0",), "c46bfc67adec"),
        Target("torch._dynamo.backends.registry:lookup_backend", "torch", ("2.13.0",), "3455f9e1cf00"),
        Target("torch._inductor.cudagraph_trees:get_obj", "torch", ("2.13.0",), "f52f2f5aba73"),
    ),
)
