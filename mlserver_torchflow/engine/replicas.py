"""The model's copies (one per device, or several on one) and the choice of copy for each request.

A request goes to the copy with the fewest rows outstanding (queued or computing); ties rotate.
Rows, not requests, because a copy's cost is its rows. A single device is a set of one copy, so
every model takes the same path.
"""

from __future__ import annotations

import asyncio
import collections

import numpy as np
import torch

from ..common import Named, logger, rows_of
from ..config import TorchFlowSettings
from ..protocol.signature import Interface
from .compiling import uses_cuda_graphs
from .device import describe, release, resolve_devices, set_math_flags
from .integrity import check_weights
from .layout import ModelFiles
from .loading import sniff_format
from .phases import Phases
from .replica import ObserverFactory, Replica, load_replica


def pick(outstanding: list[int], start: int) -> int:
    """The index with the least outstanding rows; among equals, the first at or after `start`."""
    count = len(outstanding)
    order = [(start + k) % count for k in range(count)]
    return min(order, key=lambda i: outstanding[i])


def labels(devices: list[torch.device]) -> list[str]:
    """Metric labels: the device, plus `#k` where one device holds several copies."""
    totals = collections.Counter(str(d) for d in devices)
    seen: collections.Counter[str] = collections.Counter()
    result = []
    for device in devices:
        name = str(device)
        result.append(name if totals[name] == 1 else f"{name}#{seen[name]}")
        seen[name] += 1
    return result


class ReplicaSet:
    """Presents one batcher's interface (`submit`, `close`) over every copy of the model."""

    def __init__(self, replicas: list[Replica]) -> None:
        self.replicas = replicas
        self._next = 0

    async def submit(
        self,
        arrays: list[np.ndarray],
        phases: Phases | None = None,
        priority: int = 0,
        timeout_us: int | None = None,
    ) -> Named:
        # A copy whose pass hung (execution_timeout) is passed over while another is healthy.
        index = pick([r.outstanding if r.batcher.healthy else 2**62 for r in self.replicas], self._next)
        self._next = (index + 1) % len(self.replicas)
        replica = self.replicas[index]
        rows = rows_of(arrays)
        replica.outstanding += rows
        try:
            return await replica.batcher.submit(arrays, phases, priority, timeout_us)
        finally:
            replica.outstanding -= rows
            replica.sample()

    def expire_queued(self, err: Exception) -> None:
        for replica in self.replicas:
            replica.batcher.expire_queued(err)

    def describe(self) -> str:
        return ", ".join(describe(r.device) for r in self.replicas)

    async def close(self) -> None:
        """Stop every batcher and thread, drop every module, then give each device's memory back."""
        replicas, self.replicas = self.replicas, []
        await close_all(replicas)


async def close_all(replicas: list[Replica]) -> None:
    devices = {r.device for r in replicas}
    for replica in replicas:
        await replica.batcher.close()
        replica.shutdown()
    replicas.clear()  # the last references to the modules (the batchers hold the predictors' `run`)
    for device in devices:
        release(device)


async def load_replicas(
    model: str,
    files: ModelFiles,
    interface: Interface,
    settings: TorchFlowSettings,
    example: list[np.ndarray] | None,
    observer: ObserverFactory,
) -> ReplicaSet:
    """Every copy loads and warms up concurrently (each on its own thread); if one fails, the others
    are closed and the first failure is raised."""
    devices = resolve_devices(settings.device, settings.devices)
    if any(d.type == "cuda" for d in devices):  # cuDNN's and TF32's switches, per process
        conflict = set_math_flags(model, settings.cudnn_benchmark, settings.tf32)
        if conflict:
            logger.warning(conflict)
    if settings.verify_weights:  # once per model, however many copies load it
        sniff_format(files.weights)  # a truncated or foreign file is named as such before its members
        await asyncio.to_thread(check_weights, files.weights)
    loads = [
        load_replica(model, label, device, files, interface, settings, example, observer, len(devices))
        for device, label in zip(devices, labels(devices), strict=True)
    ]
    if uses_cuda_graphs(settings):  # captures are process-wide CUDA state: one copy warms up at a time
        results: list[Replica | BaseException] = []
        for load in loads:
            try:
                results.append(await load)
            except Exception as err:
                results.append(err)
                break
        for load in loads[len(results) :]:
            load.close()  # never awaited: nothing to undo
    else:
        results = await asyncio.gather(*loads, return_exceptions=True)
    loaded = [r for r in results if isinstance(r, Replica)]
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        await close_all(loaded)
        raise failures[0]
    return ReplicaSet(loaded)
