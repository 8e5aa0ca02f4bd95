"""`compile: true`: torch.compile the loaded module, and count every graph compiled after warm-up.

The count comes from the backend itself: dynamo calls the backend once per graph it compiles, so a
backend that counts before delegating sees every compilation and recompilation of this model copy,
and of no other (a cache entry is only reused by the backend that compiled it). Global alternatives
(`torch._dynamo.utils.counters`, compile callbacks) cannot tell models apart.

Copies of one model share one code object, hence one dynamo cache and one recompile limit (8 by
default): the limit is raised with the number of copies, or the fifth copy would run eagerly. torch
2.13 takes it per call (`torch.compile(recompile_limit=)`); older torch (2.11, the GPU machine's) lacks
that argument, so there each copy's thread raises dynamo's config (never lowering it).
`isolate_recompiles` would separate them, but in torch 2.13 it races when copies run on several
threads (spurious recompiles, and hangs, measured here), so it is not used.

The batch dimension is left to dynamo's automatic dynamic shapes: the first warm-up size compiles a
static graph, the second a graph dynamic in the batch dimension, which then serves every row count
of 2 or more; one row is always a graph of its own (dynamo specialises sizes 0 and 1).
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from typing import Any

import torch

from ..common import logger
from ..config import TorchFlowSettings
from ..errors import ModelLoadError
from ..patches.torch_compile import real_backend

# Modes that turn CUDA graphs on (torch._inductor.list_mode_options); without CUDA, inductor skips them.
CUDA_GRAPH_MODES = frozenset({"reduce-overhead", "max-autotune"})


class CountingBackend:
    """A torch.compile backend that counts the graphs it compiles, then hands them to the real one."""

    def __init__(self, backend: str, mode: str, on_recompile: Callable[[], None] | None = None) -> None:
        self.name = backend
        self.mode = mode
        self.graphs = 0
        self.after_ready = 0
        self.ready = False
        self._on_recompile = on_recompile
        self._lock = threading.Lock()
        self._inner: Any = real_backend(backend, mode)

    def __call__(self, graph: torch.fx.GraphModule, example_inputs: list[Any], **kwargs: Any) -> Any:
        with self._lock:
            self.graphs += 1
            late = self.ready
            if late:
                self.after_ready += 1
        if late:
            shapes = [tuple(t.shape) for t in example_inputs if isinstance(t, torch.Tensor)]
            logger.warning(
                "compiled a new graph after warm-up (recompile %d; graph input shapes %s): a shape "
                "no warm-up size covered. Add its row count to preferred_batch_sizes.",
                self.after_ready,
                shapes[-4:],
            )
            if self._on_recompile is not None:
                self._on_recompile()
        return self._inner(graph, example_inputs, **kwargs)

    def get_compiler_config(self) -> Any:
        """Dynamo asks the backend for its config (guards and caches key on it)."""
        getter = getattr(self._inner, "get_compiler_config", None)
        return getter() if getter is not None else None

    def reset(self) -> None:
        """torch._dynamo.reset() calls this: inductor then drops its CUDA graph trees."""
        reset = getattr(self._inner, "reset", None)
        if reset is not None:
            reset()


class NewStepEachCall(torch.nn.Module):
    """CUDA-graph modes replay into fixed output buffers; marking a new step before each call tells
    inductor that the previous call's outputs (already copied to the host) may be overwritten."""

    def __init__(self, compiled: torch.nn.Module) -> None:
        super().__init__()
        self.compiled = compiled

    def forward(self, *args: Any) -> Any:
        torch.compiler.cudagraph_mark_step_begin()
        return self.compiled(*args)


def uses_cuda_graphs(settings: TorchFlowSettings) -> bool:
    """Whether the copies record CUDA graphs (inductor's CUDA-graph modes; on CPU they fall back)."""
    return (
        settings.compile
        and settings.compile_backend == "inductor"
        and settings.compile_mode in CUDA_GRAPH_MODES
    )


RECOMPILE_LIMIT_PER_COPY = 8  # torch._dynamo.config.recompile_limit's default


def compile_module(module: Any, backend: CountingBackend, source: str, copies: int = 1) -> torch.nn.Module:
    """The compiled module (lazy: graphs are compiled on the first calls, during warm-up)."""
    if isinstance(module, torch.jit.ScriptModule):
        raise ModelLoadError(
            f"compile is true, but {source} is a TorchScript model, which torch.compile cannot compile "
            "(TorchScript is compiled by its own JIT already). Set compile: false for this model, or "
            "save the model as pt2 (mlflow.pytorch.log_model(..., serialization_format='pt2')) or as "
            "a pickled nn.Module."
        )
    if not isinstance(module, torch.nn.Module):
        raise ModelLoadError(
            f"compile is true, but {source} loaded as a {type(module).__name__}, not an nn.Module; set "
            "compile: false."
        )
    options: dict[str, Any] = {"backend": backend}
    if compile_takes_limit():  # else the copy's thread raised dynamo's config (replica._thread_setup)
        options["recompile_limit"] = RECOMPILE_LIMIT_PER_COPY * copies
    compiled = torch.compile(module, **options)
    assert isinstance(compiled, torch.nn.Module)  # torch.compile of a module returns an OptimizedModule
    if backend.mode in CUDA_GRAPH_MODES:
        return NewStepEachCall(compiled)
    return compiled


def compile_takes_limit() -> bool:
    """Whether `torch.compile` takes `recompile_limit` (torch 2.13; not 2.11)."""
    return "recompile_limit" in inspect.signature(torch.compile).parameters


def raise_recompile_limit(limit: int) -> int:
    """Dynamo's recompile limit, raised to at least `limit` (`cache_size_limit` before it was renamed);
    returns the limit in force. Call it on the thread that runs the compiled model: from torch 2.13
    dynamo's config is a context variable, so a value set on another thread does not apply there."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(int(getattr(config, name)), limit))
    return int(getattr(config, name))


def describe(backend: CountingBackend, sizes: tuple[int, ...]) -> str:
    """For the model's metadata: what was compiled, and for which batch sizes before ready."""
    warmed = ",".join(str(s) for s in sizes) or "none"
    return f"{backend.name} mode={backend.mode}, {backend.graphs} graph(s), warmed rows {warmed}"
