"""Prometheus metrics that MLServer's metrics endpoint (:8082/metrics) exports in both modes.

With `parallel_workers: 0` that endpoint serves prometheus_client's default registry, not
`mlserver.metrics.REGISTRY` (why MLServer's own custom metrics vanish then, MLServer issue 1151), so
ours go in the default registry. With workers, the values travel in prometheus_client's
multiprocess files (MLServer sets PROMETHEUS_MULTIPROC_DIR before spawning them). Metrics are
created lazily, after MLServer has chosen the value class.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram

from ..engine.device import DeviceStats
from ..engine.phases import Phases
from ..patches.internals import registered_collector

ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
TIME_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


def _get(kind: type, name: str, doc: str, **kwargs: Any) -> Any:
    existing = registered_collector(name)
    if existing is not None:
        return existing
    return kind(name, doc, registry=REGISTRY, **kwargs)


def _gauge(name: str, doc: str, mode: str = "livemax") -> Any:
    return _get(Gauge, name, doc, labelnames=["model", "device"], multiprocess_mode=mode)


def _histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Any:
    return _get(Histogram, name, doc, labelnames=["model", "device"], buckets=buckets)


class BatchMetrics:
    """The children of the runtime's metrics for one model copy, labelled by model and device
    (`cpu#1` for the second copy on one device, so that each copy is told apart). It is the
    engine's `CopyObserver`. `executions` receives each executed batch (the model's statistics)."""

    def __init__(self, model: str, device: str, executions: Callable[[Phases], None] | None = None) -> None:
        labels = {"model": model, "device": device}
        self._executions = executions
        self._labels = labels
        self._memory_at = -float("inf")
        self._rows = _histogram(
            "torchflow_batch_rows", "Rows per executed forward pass (batch size).", ROW_BUCKETS
        ).labels(**labels)
        self._wait = _histogram(
            "torchflow_queue_wait_seconds", "Time a request waited before its batch started.", TIME_BUCKETS
        ).labels(**labels)
        self._compute = _histogram(
            "torchflow_compute_seconds", "Forward-pass time of one batch, copies included.", TIME_BUCKETS
        ).labels(**labels)
        self._queue = _gauge("torchflow_queue_rows", "Rows waiting in the batch queue.", "livesum").labels(
            **labels
        )
        self._memory = _gauge(
            "torchflow_device_memory_bytes",
            "Memory in use on the model's device (CUDA allocator, or process RSS on CPU).",
        ).labels(**labels)
        self._recompiles: Any = None
        self._rows_set = -1
        self._levels: list[int] = []  # the sizes last set, per priority level, and their gauges' children
        self._level_gauges: list[Any] = []

    def batch(self, rows: int, seconds: float) -> None:
        self._rows.observe(rows)
        self._compute.observe(seconds)

    def executed(self, phases: Phases) -> None:
        if self._executions is not None:
            self._executions(phases)

    def queue_wait(self, seconds: float) -> None:
        self._wait.observe(seconds)

    def queue(self, rows: int, sizes: list[int]) -> None:
        """Called on every queue change: only the values that changed are set, on children looked up
        once (a label lookup costs more than the rest of a request's bookkeeping)."""
        if rows != self._rows_set:
            self._rows_set = rows
            self._queue.set(rows)
        if not self._level_gauges:
            gauge = _get(
                Gauge,
                "torchflow_queue_requests",
                "Requests waiting in the batch queue, by priority level (1 is the highest).",
                labelnames=["model", "device", "priority"],
                multiprocess_mode="livesum",
            )
            self._level_gauges = [
                gauge.labels(**self._labels, priority=str(n)) for n in range(1, len(sizes) + 1)
            ]
            self._levels = [-1] * len(sizes)
        levels = self._levels
        for level, size in enumerate(sizes):
            if levels[level] != size:
                levels[level] = size
                self._level_gauges[level].set(size)

    def rejected(self, level: int, reason: str) -> None:
        _get(
            Counter,
            "torchflow_queue_rejected",
            "Requests refused unrun by the queue policy, by priority level and reason (full, timeout).",
            labelnames=["model", "device", "priority", "reason"],
        ).labels(**self._labels, priority=str(level), reason=reason).inc()

    def memory(self, read: Callable[[], DeviceStats], every: float = 1.0) -> None:
        """Sample the device at most once per `every` seconds: reading it costs more than a request's
        bookkeeping. A value the device cannot report (CUDA-only, or utilisation without NVML) gets no
        sample at all rather than a misleading 0."""
        now = time.monotonic()
        if now - self._memory_at < every:
            return
        self._memory_at = now
        stats = read()
        self._memory.set(stats.in_use)
        for name, doc, value in (
            (
                "torchflow_device_memory_allocated_bytes",
                "CUDA allocator bytes held by tensors.",
                stats.allocated,
            ),
            (
                "torchflow_device_memory_reserved_bytes",
                "CUDA allocator bytes reserved (cached).",
                stats.reserved,
            ),
            (
                "torchflow_device_utilization_percent",
                "GPU busy time over NVML's last sample period.",
                stats.utilization,
            ),
        ):
            if value is not None:
                _gauge(name, doc).labels(**self._labels).set(value)

    def count_recompiles(self) -> None:
        """Export the recompile counter of a compiled model (at 0 until a graph is compiled late)."""
        self._recompiles = _get(
            Counter,
            "torchflow_compile_recompiles",
            "Graphs torch.compile compiled, or CUDA graphs recorded, after the model reported ready (a "
            "shape warm-up missed).",
            labelnames=["model", "device"],
        ).labels(**self._labels)

    def recompiled(self) -> None:
        if self._recompiles is not None:
            self._recompiles.inc()
