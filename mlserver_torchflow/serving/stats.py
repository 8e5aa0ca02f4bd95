"""Triton's inference statistics for one model, fed by the batcher's own timings.

perf_analyzer reads them (`GET /v2/models/<m>/stats`, gRPC `ModelStatistics`) before and after a
run and prints the server-side breakdown: queue, compute input, compute infer, compute output. Each
request counts its own queue wait and its batch's compute times, as Triton does; `batch_stats` counts
each executed batch once, by the rows the model ran. Everything here runs on the event loop.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from ..engine.phases import Phases

PHASES = ("queue", "compute_input", "compute_infer", "compute_output")
_BATCH_PHASES = PHASES[1:]


class Duration:
    """A count and a total in nanoseconds (Triton's `StatisticDuration`)."""

    __slots__ = ("count", "ns")

    def __init__(self) -> None:
        self.count = 0
        self.ns = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += int(seconds * 1e9)

    def triton(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


class ModelStats:
    """Counters since load. `inference_count` counts rows, `execution_count` forward passes."""

    def __init__(self) -> None:
        self.success = Duration()
        self.fail = Duration()
        self.phases = {name: Duration() for name in PHASES}
        self.batches: defaultdict[int, dict[str, Duration]] = defaultdict(
            lambda: {name: Duration() for name in _BATCH_PHASES}
        )
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference_ms = 0

    def succeeded(self, rows: int, seconds: float, phases: Phases) -> None:
        self.success.add(seconds)
        for name in PHASES:
            self.phases[name].add(getattr(phases, name))
        self.inference_count += rows
        self.last_inference_ms = time.time_ns() // 1_000_000  # Triton reports wall-clock milliseconds

    def failed(self, seconds: float) -> None:
        self.fail.add(seconds)
        self.last_inference_ms = time.time_ns() // 1_000_000

    def executed(self, phases: Phases) -> None:
        self.execution_count += 1
        batch = self.batches[phases.rows]
        for name in _BATCH_PHASES:
            batch[name].add(getattr(phases, name))

    def triton(self, name: str, version: str | None) -> dict[str, Any]:
        """One entry of Triton's `model_stats` list."""
        return {
            "name": name,
            # Triton's versions are numbers from 1, and perf_analyzer parses them as such (an empty
            # one aborts it): an unversioned MLServer model is reported as version 1.
            "version": version or "1",
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.triton(),
                "fail": self.fail.triton(),
                **{phase: self.phases[phase].triton() for phase in PHASES},
                "cache_hit": Duration().triton(),
                "cache_miss": Duration().triton(),
            },
            "batch_stats": [
                {"batch_size": rows, **{phase: d.triton() for phase, d in durations.items()}}
                for rows, durations in sorted(self.batches.items())
            ],
        }
