"""One copy of the model on one device: its module, its executor thread, its batcher and metrics.

MLServer cannot pin its worker processes to GPUs (MLServer issue 1570), so a model that should use
several devices keeps one copy per device in this process (replicas.py spreads the requests).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from ..common import Named, logger
from ..config import TorchFlowSettings
from ..patches.torch_compile import cudagraph_thread_state
from ..protocol.shapes import ShapeRules
from ..protocol.signature import Interface
from .batching import Batcher
from .compiling import (
    RECOMPILE_LIMIT_PER_COPY,
    CountingBackend,
    compile_module,
    compile_takes_limit,
    raise_recompile_limit,
    uses_cuda_graphs,
)
from .device import DeviceStats, bind_thread, device_stats, target_dtype
from .inference import Predictor
from .layout import ModelFiles
from .loading import Format, load_module
from .merging import within
from .phases import BatchObserver
from .warmup import batch_sizes, calibrate, run_example, run_sizes


class CopyObserver(BatchObserver, Protocol):
    """What one copy reports besides its batches: device memory, and late compilations."""

    def memory(self, read: Callable[[], DeviceStats], every: float = 1.0) -> None: ...

    def count_recompiles(self) -> None: ...

    def recompiled(self) -> None: ...


ObserverFactory = Callable[[str], CopyObserver]
"""Builds the observer of the copy with the given metrics label (the serving layer's metrics)."""


@dataclass(eq=False)
class Replica:
    """Everything one copy owns; `outstanding` is what the replica set balances on."""

    device: torch.device
    label: str  # the metrics' device label: `cuda:1`, or `cpu#0` / `cpu#1` for copies on one device
    predictor: Predictor
    executor: ThreadPoolExecutor
    collector: ThreadPoolExecutor | None  # finishes the passes of a staging device (engine/transfers.py)
    batcher: Batcher
    metrics: CopyObserver
    format: Format
    example_outputs: Named | None = None
    backend: CountingBackend | None = None
    warmed_sizes: tuple[int, ...] = ()
    rules: ShapeRules | None = None  # a pt2 program's input-shape guards
    outstanding: int = 0  # rows submitted and not yet answered (queued or computing)

    def sample(self, every: float = 1.0) -> None:
        self.metrics.memory(lambda: device_stats(self.device), every=every)

    def shutdown(self) -> None:
        """Stop the copy's threads: the executor first, which may still queue a finish on the collector."""
        self.executor.shutdown(wait=True)
        if self.collector is not None:
            self.collector.shutdown(wait=True)


def _thread_setup(device: torch.device, cuda_graphs: bool, recompile_limit: int) -> None:
    """First thing on a copy's own thread: its GPU is the current one, inductor's CUDA-graph state exists
    there (patches/torch_compile.py: torch before 2.13 has it only on its import thread), and, where
    torch.compile takes no per-call limit, dynamo's recompile limit covers every copy."""
    bind_thread(device)
    if cuda_graphs:
        cudagraph_thread_state()
    if recompile_limit:
        raise_recompile_limit(recompile_limit)


def _channels_last(module: torch.nn.Module) -> torch.nn.Module:
    """4-D weights in channels-last order (a module's other tensors are left as they are)."""
    return module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]


async def load_replica(
    model: str,
    label: str,
    device: torch.device,
    files: ModelFiles,
    interface: Interface,
    settings: TorchFlowSettings,
    example: list[np.ndarray] | None,
    observer: ObserverFactory,
    copies: int = 1,
) -> Replica:
    """Load, compile and warm one copy (of `copies`) on its own thread; the thread is shut down if a
    step fails."""
    started = time.monotonic()
    graphs = uses_cuda_graphs(settings)
    limit = RECOMPILE_LIMIT_PER_COPY * copies if settings.compile and not compile_takes_limit() else 0
    executor = ThreadPoolExecutor(
        max_workers=1,
        thread_name_prefix=f"torchflow-{model}-{label}",
        initializer=_thread_setup,
        initargs=(device, graphs, limit),
    )
    loop = asyncio.get_running_loop()
    where = f"in {files.model_dir} on {device}"
    try:
        dtype = target_dtype(settings.dtype)
        cast = dtype if settings.precision == "cast" else None
        loaded = await loop.run_in_executor(executor, load_module, files, device, cast, settings.allow_pickle)
        module, fmt = loaded.module, loaded.format
        # A pt2 program's own bounds on the batch dimension cap what a batch may hold.
        config = within(settings.batch_config(), loaded.rules.max_rows() if loaded.rules else None)
        metrics = observer(label)
        backend = None
        if settings.compile:
            metrics.count_recompiles()
            backend = CountingBackend(settings.compile_backend, settings.compile_mode, metrics.recompiled)
            module = compile_module(module, backend, str(files.weights), copies)
        if settings.channels_last and hasattr(module, "to"):
            module = await loop.run_in_executor(executor, _channels_last, module)
        predictor = Predictor(
            module,
            device,
            dtype,
            interface,
            settings.precision,
            channels_last=settings.channels_last,
            cuda_graphs=graphs and device.type == "cuda",
            on_recording=metrics.recompiled,
        )
        outputs = None if example is None else await run_example(predictor.run, executor, example, where)
        sizes: tuple[int, ...] = ()
        if backend is not None and settings.warmup:
            wanted = batch_sizes(config)
            # CUDA graphs: inductor runs a size eagerly, records it on the second call, replays from the
            # third; three passes leave no capture to the first live request of each size.
            passes = 3 if graphs else 1
            sizes = await run_sizes(predictor.run, executor, wanted, example, interface, where, passes)
            if not sizes:
                logger.warning(
                    "model %s: compile is on, but neither an input example nor the signature gives the "
                    "shape of a row: nothing was compiled before ready, the first requests compile",
                    model,
                )
    except BaseException:
        executor.shutdown(wait=True)
        raise
    if backend is not None:
        backend.ready = True  # from here on, every compiled graph is a recompile
    predictor.ready = True  # and every CUDA graph recorded
    collector = None
    if predictor.pipelined:
        collector = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix=f"torchflow-{model}-{label}-out",
            initializer=bind_thread,
            initargs=(device,),
        )
    pipeline = None if collector is None else (predictor, collector)
    batcher = Batcher(predictor.run, executor, config, metrics, device.type, pipeline)
    # compiled copies are warmed at their batch sizes only: a timed pass at another would compile
    if settings.warmup and config.max_batch_size > 1 and backend is None:
        try:
            batcher.calibrate(
                *await calibrate(predictor.run, executor, config.max_batch_size, example, interface)
            )
        except Exception as err:  # the example already ran: a failure here is the model's own flakiness
            logger.warning(
                "model %s: timing passes for the batcher failed (%s); it learns online", model, err
            )
    replica = Replica(
        device,
        label,
        predictor,
        executor,
        collector,
        batcher,
        metrics,
        fmt,
        outputs,
        backend,
        sizes,
        loaded.rules,
    )
    replica.sample(every=0)
    logger.info(
        "model %s: copy %s ready in %.2fs%s",
        model,
        label,
        time.monotonic() - started,
        f" ({backend.graphs} graph(s) compiled for rows {list(sizes)})" if backend else "",
    )
    return replica
