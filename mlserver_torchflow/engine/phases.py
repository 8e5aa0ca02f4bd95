"""What the batcher measures and reports: where a request's time went, and the observer it tells."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass
class Phases:
    """Where one request's (or one batch's) time went, in seconds, as Triton's statistics count it.

    `compute_input` is decoding (the runtime's) plus merging the batch; `compute_infer` is the pass on
    the executor thread, copies to and from the device included (their end is the first point the host
    waits on the device); `compute_output` is splitting the batch plus encoding (the runtime's). `rows`
    is the batch the model ran (padding included).
    """

    queue: float = 0.0
    compute_input: float = 0.0
    compute_infer: float = 0.0
    compute_output: float = 0.0
    rows: int = 0


class BatchObserver(Protocol):
    """What the batcher reports (the serving layer's metrics and statistics implement it)."""

    def batch(self, rows: int, seconds: float) -> None: ...

    def executed(self, phases: Phases) -> None: ...

    def queue_wait(self, seconds: float) -> None: ...

    def queue(self, rows: int, sizes: list[int]) -> None:
        """Rows waiting, and requests waiting at each priority level (index 0 is level 1)."""

    def rejected(self, level: int, reason: str) -> None:
        """A request of priority level `level` (1-based) was refused unrun: `full` or `timeout`."""
