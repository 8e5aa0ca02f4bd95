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

from prometheus_client import REGISTRY, Gauge, Histogram

ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
TIME_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


def _get(kind: type, name: str, doc: str, **kwargs: Any) -> Any:
    existing = REGISTRY._names_to_collectors.get(name)
    if existing is not None:
        return existing
    return kind(name, doc, registry=REGISTRY, **kwargs)


class BatchMetrics:
    """The per-model children of the runtime's metrics."""

    def __init__(self, model: str, device: str) -> None:
        labels = {"model": model}
        self._memory_at = -float("inf")
        self._rows = _get(
            Histogram,
            "torchflow_batch_rows",
            "Rows per executed forward pass (batch size).",
            labelnames=["model"],
            buckets=ROW_BUCKETS,
        ).labels(**labels)
        self._wait = _get(
            Histogram,
            "torchflow_queue_wait_seconds",
            "Time a request waited before its batch started.",
            labelnames=["model"],
            buckets=TIME_BUCKETS,
        ).labels(**labels)
        self._compute = _get(
            Histogram,
            "torchflow_compute_seconds",
            "Forward-pass time of one batch, copies included.",
            labelnames=["model"],
            buckets=TIME_BUCKETS,
        ).labels(**labels)
        self._queue = _get(
            Gauge,
            "torchflow_queue_rows",
            "Rows waiting in the batch queue.",
            labelnames=["model"],
            multiprocess_mode="livesum",
        ).labels(**labels)
        self._memory = _get(
            Gauge,
            "torchflow_device_memory_bytes",
            "Memory in use on the model's device (CUDA allocator, or process RSS on CPU).",
            labelnames=["model", "device"],
            multiprocess_mode="livemax",
        ).labels(model=model, device=device)

    def batch(self, rows: int, seconds: float) -> None:
        self._rows.observe(rows)
        self._compute.observe(seconds)

    def queue_wait(self, seconds: float) -> None:
        self._wait.observe(seconds)

    def queue_rows(self, rows: int) -> None:
        self._queue.set(rows)

    def memory(self, read: Callable[[], int], every: float = 1.0) -> None:
        """Sample memory at most once per `every` seconds: reading it costs more than a request's bookkeeping."""
        now = time.monotonic()
        if now - self._memory_at >= every:
            self._memory_at = now
            self._memory.set(read())
