"""The batch queue with Triton's queue policy: priority levels, per-request timeouts, per-level caps.

Level 1 is the highest priority. Requests are taken level by level, oldest first; within a level,
requests whose timeout ran out with the `delay` action come after those still in time (Triton: "until
all other requests at the same or higher priority levels that have not timed out are processed").
With one level and no timeouts this is a FIFO queue, which is what a model without a policy gets.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from ..common import Named
from ..config import BatchConfig
from ..errors import QueueFull, QueueTimeout, RequestTooLarge
from .merging import BatchKey
from .phases import Phases


@dataclass(eq=False)
class Queued:
    """One request waiting: its rows, what it may be batched with, and its place in the policy."""

    arrays: list[np.ndarray]
    rows: int
    key: BatchKey
    future: asyncio.Future[Named]
    phases: Phases
    level: int = 0  # index into the levels: 0 is priority level 1
    timeout: float = 0.0  # seconds it may wait before its level's timeout action; 0 = forever
    timeout_from: str = "queue_timeout"  # which setting or parameter set it, for the 503's message
    enqueued: float = field(default_factory=time.monotonic)
    delayed: bool = False


def level_of(config: BatchConfig, priority: int) -> int:
    """The level index for a request's `priority`: 0, or one past the levels, means the default level
    (as Triton does)."""
    levels = len(config.levels)
    return (priority if 1 <= priority <= levels else config.default_level) - 1


def timeout_of(config: BatchConfig, level: int, requested_us: int | None) -> tuple[float, str]:
    """The request's queue timeout in seconds, and where it comes from: its own (`timeout`,
    microseconds) where its level allows an override, else the level's default, else `queue_timeout`."""
    policy = config.levels[level]
    if requested_us and policy.allow_timeout_override:
        return requested_us / 1e6, "the request's timeout parameter"
    if policy.default_timeout:
        return policy.default_timeout, f"level {level + 1}'s default_timeout_microseconds"
    return config.queue_timeout, "queue_timeout"


class LevelQueue:
    """The waiting requests of one model copy, by priority level."""

    def __init__(self, config: BatchConfig) -> None:
        self._config = config
        count = len(config.levels)
        self._ready: list[deque[Queued]] = [deque() for _ in range(count)]
        self._delayed: list[deque[Queued]] = [deque() for _ in range(count)]
        self.rows = 0
        self._swept = True  # nothing waiting has a timeout, nor was cancelled: sweeping finds nothing

    def __iter__(self) -> Iterator[Queued]:
        for ready, delayed in zip(self._ready, self._delayed, strict=True):
            yield from ready
            yield from delayed

    def __bool__(self) -> bool:
        return self.rows > 0 or any(self._ready) or any(self._delayed)

    def sizes(self) -> list[int]:
        """Requests waiting per level."""
        return [len(r) + len(d) for r, d in zip(self._ready, self._delayed, strict=True)]

    def room_for(self, rows: int, level: int) -> None:
        """Raises unless `rows` more fit within `max_queue_rows` (0: no cap), and one more request within
        its level's `max_queue_size` (0: no cap)."""
        limit = self._config.max_queue_rows
        if limit and self.rows + rows > limit:
            if rows > limit:
                raise RequestTooLarge(
                    f"the request has {rows} rows; this model queues at most {limit} rows "
                    "(max_queue_rows). Split it into smaller requests."
                )
            raise QueueFull(
                f"the model's queue is full ({self.rows} of {limit} rows waiting); retry after a short "
                "back-off, or scale out."
            )
        cap = self._config.levels[level].max_queue_size
        waiting = len(self._ready[level]) + len(self._delayed[level])
        if cap and waiting >= cap:
            raise QueueFull(
                f"the queue of priority level {level + 1} is full ({waiting} of {cap} requests "
                "waiting, max_queue_size); retry after a short back-off, or scale out."
            )

    def next_expiry(self, now: float) -> float | None:
        """Seconds until the next waiting request's timeout runs out (None: none will)."""
        if self._swept:
            return None
        ends = [i.enqueued + i.timeout for i in self if i.timeout and not i.delayed]
        return max(min(ends) - now, 0.0) + 1e-4 if ends else None

    def push(self, item: Queued) -> None:
        """Queue `item`, which `room_for` admitted."""
        self._ready[item.level].append(item)
        self.rows += item.rows
        self._swept = self._swept and not item.timeout

    def push_front(self, item: Queued) -> None:
        """Put back, first in its level, a request that was about to run alone (it came first)."""
        self._ready[item.level].appendleft(item)
        self.rows += item.rows
        self._swept = self._swept and not item.timeout

    def cancelled(self) -> None:
        """A waiting request was cancelled: the next sweep drops it."""
        self._swept = False

    def first(self) -> Queued:
        return next(iter(self))

    def take(self, key: BatchKey, max_rows: int) -> list[Queued]:
        """In priority order, the requests with `key`, up to `max_rows` rows (a larger first one alone)."""
        taken: list[Queued] = []
        rows = 0
        for item in self:
            if item.key == key and (not taken or rows + item.rows <= max_rows):
                taken.append(item)
                rows += item.rows
                if rows >= max_rows:
                    break
        chosen = {id(item) for item in taken}
        for queues in (self._ready, self._delayed):
            for index, queue in enumerate(queues):
                if any(id(item) in chosen for item in queue):
                    queues[index] = deque(item for item in queue if id(item) not in chosen)
        self.rows -= rows
        return taken

    def sweep(self, now: float) -> list[tuple[Queued, str]]:
        """Drop the cancelled; apply the timeout action to the expired. Returns (item, "timeout") for
        each one rejected (already answered with its 503)."""
        rejected: list[tuple[Queued, str]] = []
        if self._swept:  # every request is waited on and in time: this is most calls, made per arrival
            return rejected
        timed = False
        for index in range(len(self._ready)):
            delay = self._config.levels[index].delay
            kept: deque[Queued] = deque()
            for item in self._ready[index]:
                if item.future.done():
                    self.rows -= item.rows
                elif item.timeout and now - item.enqueued > item.timeout:
                    if delay:
                        item.delayed = True
                        self._delayed[index].append(item)
                        continue
                    self.rows -= item.rows
                    item.future.set_exception(_timed_out(item, now))
                    rejected.append((item, "timeout"))
                else:
                    kept.append(item)
                    timed = timed or bool(item.timeout)
            self._ready[index] = kept
            alive = deque(i for i in self._delayed[index] if not i.future.done())
            self.rows -= sum(i.rows for i in self._delayed[index] if i.future.done())
            self._delayed[index] = alive
        self._swept = not timed
        return rejected

    def clear(self) -> list[Queued]:
        """Every waiting request, removed from the queue (the caller answers them)."""
        items = list(self)
        for queue in (*self._ready, *self._delayed):
            queue.clear()
        self.rows = 0
        return items


def _timed_out(item: Queued, now: float) -> QueueTimeout:
    return QueueTimeout(
        f"the request waited {now - item.enqueued:.3f}s in the queue (priority level {item.level + 1}), "
        f"more than its timeout ({item.timeout:g}s, {item.timeout_from}); it was not run. Retry, or scale out."
    )
