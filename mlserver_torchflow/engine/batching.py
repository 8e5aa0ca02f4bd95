"""Adaptive batching on decoded tensors, counted in rows, with each request isolated: when a batch runs.

Requests arrive already validated and decoded (a bad one got its 400 before reaching here). They wait
in a `queueing.LevelQueue` (Triton's priority levels and timeouts); `dispatch` decides when the
compatible ones (`merging`) go to the device together: at once for a lone request, later while the
rows about to arrive are worth more than the wait, never later than `max_batch_time` after the
oldest. A batch runs in one forward pass on the model's executor thread and the outputs are split
back by row counts; a failing batch is re-run request by request so that only the culprit fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from concurrent.futures import Executor

import numpy as np

from ..common import Named, rows_of
from ..config import BatchConfig
from ..errors import QueueFull, Unloading
from .clients import Population
from .dispatch import MIN_HOLD, Alarm, Arrivals, CoreUse, hold, lead, stage_next
from .merging import BatchKey, batch_key
from .offload import Pipeline, RunFn
from .passes import Passes, deliver
from .phases import BatchObserver, Phases
from .queueing import LevelQueue, Queued, level_of, timeout_of


class Batcher:
    def __init__(
        self,
        run: RunFn,
        executor: Executor,
        config: BatchConfig,
        metrics: BatchObserver,
        device_type: str = "cpu",
        pipeline: Pipeline | None = None,
    ) -> None:
        self.config = config
        self._metrics = metrics
        self.core = CoreUse.of(config.compute_on, device_type)
        self._arrivals = Arrivals()
        self._population = Population()
        self._outstanding = 0  # requests submitted and not answered yet (queued or computing)
        self._wake = Alarm()
        self._passes = Passes(run, executor, config, metrics, self.core, self._wake.set, pipeline)
        self._queue = LevelQueue(config)
        self._in_flight = 0
        self._running_ends = 0.0  # when the passes in flight are expected to be done (monotonic)
        self._freed = 0.0  # when the last pass ended
        self._answered = 0.0  # when its answers had gone out
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task = asyncio.get_running_loop().create_task(self._dispatch_loop())

    async def submit(
        self,
        arrays: list[np.ndarray],
        phases: Phases | None = None,
        priority: int = 0,
        timeout_us: int | None = None,
    ) -> Named:
        """The model's outputs for these rows; `phases`, when given, receives where the time went.
        `priority` and `timeout_us` are the request's own (Triton's parameters; 0 / None: the defaults)."""
        self._outstanding += 1
        try:
            return await self._submit(arrays, phases, priority, timeout_us)
        finally:
            self._outstanding -= 1

    async def _submit(
        self, arrays: list[np.ndarray], phases: Phases | None, priority: int, timeout_us: int | None
    ) -> Named:
        phases = Phases() if phases is None else phases
        if not self.healthy:
            raise self._passes.still_hung()
        key = batch_key(arrays)
        rows = rows_of(arrays)
        now = time.monotonic()
        self._arrivals.arrived(now, rows)
        self._population.arrived(self._outstanding, now, rows, self._arrivals.lag)
        if key is None or not self._passes.splittable or self.config.max_batch_size <= 1:
            return await self._passes.run_alone(arrays, phases)
        level = level_of(self.config, priority)
        try:
            self._queue.room_for(rows, level)
        except QueueFull:
            self._metrics.rejected(level + 1, "full")
            raise
        timeout, timeout_from = timeout_of(self.config, level, timeout_us)
        future = asyncio.get_running_loop().create_future()
        item = Queued(arrays, rows, key, future, phases, level, timeout, timeout_from, now)
        if self._in_flight == 0 and not self._queue and self._hold(item, now) <= 0:
            # Idle device, empty queue, nobody worth waiting for: run now, on this task.
            self._in_flight += 1
            self._running_ends = now + self._passes.cost(key).predict(rows)
            joined = False
            try:
                if not self._passes.may_inline(key, rows):
                    await self._passes.execute([item])
                else:
                    # Two loop turns let requests already read reach this queue; with company, the
                    # dispatcher forms the batch (this one first), else the pass runs on the loop.
                    await asyncio.sleep(0)
                    await asyncio.sleep(0)
                    joined = bool(self._queue)
                    if joined:
                        self._queue.push_front(item)
                    else:
                        await self._passes.execute([item], inline=True)
            finally:
                self._in_flight -= 1
                self._ended(0 if joined else rows, now)
            if not joined:
                return item.future.result()
        else:
            self._queue.push(item)  # room_for admitted it, and nothing ran since
        self._report_queue()
        if item.timeout or self._in_flight < self.core.depth:  # else a pass's end wakes the dispatcher
            self._wake.set()
        try:
            return await item.future  # cancelling this leaves the batch alone: see _deliver
        except asyncio.CancelledError:
            self._queue.cancelled()
            raise

    def calibrate(self, key: BatchKey | None, samples: list[tuple[int, float, float]]) -> None:
        """Timed warm-up passes (rows, thread CPU s, wall s) of batch shape `key`: Passes.calibrate."""
        self._passes.calibrate(key, samples)

    def expire_queued(self, err: Exception) -> None:
        """The drain ran out: every request still waiting (not running) gets a copy of `err` (tagged later)."""
        for item in self._queue.clear():
            deliver(item, type(err)(*err.args))
        self._report_queue()

    async def close(self) -> None:
        self._loop_task.cancel()
        for task in (self._loop_task, *self._tasks):
            with contextlib.suppress(BaseException):  # shutting down; results were delivered already
                await task
        for item in self._queue.clear():
            deliver(item, Unloading("the model is being unloaded and this request was not run; retry it."))

    def describe(self) -> str:
        """Where the passes compute and what the batcher has learnt of their cost, for metadata and logs."""
        clients = self._population.describe(self._arrivals.lag)
        return f"computes on the {self.core.describe()}{self._passes.describe()}{clients}"

    async def _dispatch_loop(self) -> None:
        while True:
            next_expiry = self._sweep()
            if not self.healthy:  # nothing may queue behind a hung pass
                self.expire_queued(self._passes.still_hung())
            if not self._queue or self._in_flight >= self.core.depth:
                await self._wake.sleep(next_expiry)
                continue
            now = time.monotonic()
            first = self._queue.first()
            wait = self._hold(first, now)
            if wait <= 0:
                self._launch(first.key)
            else:
                await self._wake.sleep(wait if next_expiry is None else min(wait, next_expiry))

    def _hold(self, first: Queued, now: float) -> float:
        """Seconds to keep the batch headed by `first` waiting; 0: hand it to the device now."""
        config = self.config
        others = [i for i in self._queue if i is not first]
        rows = first.rows + sum(i.rows for i in others if i.key == first.key)
        cost = self._passes.cost(first.key)
        freed = max(self._freed, self._answered)  # waiting behind a pass or its answers is not for company
        # Off-core, a pass running: hand over just before it ends (dispatch.lead), full or not (a higher
        # priority may come).
        if self._in_flight:
            ahead = lead(cost, self._passes.staging(first.key), rows)
            if not stage_next(now, self._running_ends, ahead):
                return self._running_ends - ahead - now
            freed = self._running_ends - ahead
        # Full, or every client's request is waiting (none computing): nobody else is coming. With a
        # pass running its clients come back after it, so the hold rule weighs them as usual.
        if rows >= config.max_batch_size or self._population.all_in(1 + len(others)):
            return 0.0
        fixed, per_row = cost.fit()
        waited, arrivals = now - max(first.enqueued, freed), self._arrivals
        # Closed-loop clients may do better in groups that take turns on an off-core device, or on our
        # cores, all waiting for each other (clients.py: each a trial, kept where it serves more).
        if self.core.on_core and self._population.patient():
            if config.max_batch_time - waited > MIN_HOLD:
                return config.max_batch_time - waited
            self._population.waited_out(rows)
            return 0.0
        split = None if self.core.on_core else self._population.group_rows(fixed, per_row, arrivals.lag)
        if split is not None and rows >= split:
            return 0.0
        quiet = arrivals.quiet(now, self._running_ends if self._in_flight else self._freed, freed)
        limits = (config.max_batch_size, config.max_batch_time)
        return hold(rows, waited, quiet, arrivals.gap, fixed, *limits, arrivals.owed)

    @property
    def healthy(self) -> bool:
        """False while a pass that ran past execution_timeout has not returned."""
        return self._passes.healthy

    def _sweep(self) -> float | None:
        """Cancelled requests leave the queue; expired ones get their level's timeout action. Returns
        the seconds until the next request expires (None: none will)."""
        now = time.monotonic()
        for item, reason in self._queue.sweep(now):
            self._metrics.rejected(item.level + 1, reason)
        self._report_queue()
        return self._queue.next_expiry(now)

    def _report_queue(self) -> None:
        self._metrics.queue(self._queue.rows, self._queue.sizes())

    def _launch(self, key: BatchKey) -> None:
        """In priority order among compatible requests, up to max_batch_size rows (a larger one alone)."""
        items = self._queue.take(key, self.config.max_batch_size)
        self._report_queue()
        self._in_flight += 1
        rows = sum(i.rows for i in items)
        predicted = self._passes.cost(key).predict(rows)
        self._running_ends = max(time.monotonic(), self._running_ends) + predicted
        task = asyncio.get_running_loop().create_task(self._pass(items, rows))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _pass(self, items: list[Queued], rows: int) -> None:
        started = time.monotonic()
        try:
            await self._passes.execute(items)
        finally:  # before the answered requests' tasks run (their answers take the loop a while)
            self._in_flight -= 1
            self._ended(rows, started)

    def _ended(self, rows: int, started: float) -> None:
        """A pass over `rows` rows, begun at `started`, ended (0 rows: the lone request joined a batch)."""
        self._freed = time.monotonic()
        self._arrivals.ended(self._freed, rows)
        self._population.passed(self._freed, rows, self._freed - started)
        self._wake.set()
        asyncio.get_running_loop().call_soon(self._answering_done)

    def _answering_done(self) -> None:
        """Runs after the answered requests' tasks, until when the loop reads no request: a request left
        waiting counts its wait for company from here (docs/batching.md, "Answers first")."""
        self._answered = time.monotonic()
