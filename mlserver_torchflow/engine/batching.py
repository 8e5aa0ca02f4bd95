"""Adaptive batching on decoded tensors, counted in rows, with each request isolated: when a batch runs.

Requests arrive already validated and decoded (a bad one got its 400 before reaching here). Those
that `merging` says may share a pass are concatenated, run in one forward pass on the model's
executor thread, and the outputs are split back by row counts. When the device is idle and nothing
is queued, a request runs at once; while a batch runs, arrivals accumulate until `max_batch_size`
rows or `max_batch_time` after the oldest arrival, whichever comes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..common import Named, logger, rows_of
from ..config import BatchConfig
from ..errors import ExecutionTimeout, QueueFull, QueueTimeout, RequestTooLarge, Unloading
from .device import is_out_of_memory
from .merging import BatchKey, batch_key, concatenate, has_batch_dimension, join, padded_rows, split

RunFn = Callable[[list[np.ndarray]], Named]
# Batches handed to the executor at once. On CUDA 2: the next batch waits in the executor's queue and
# starts the moment the device frees, with no event-loop round trip between them. On CPU 1: the forward
# shares the cores with the event loop, so a second batch closed early only freezes a small batch that
# would have grown while the first one ran (measured: mean batch 2-4 rows at 32 clients with 2).
MAX_IN_FLIGHT = {"cuda": 2, "cpu": 1}


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

    def queue_rows(self, rows: int) -> None: ...


@dataclass(eq=False)
class _Item:
    arrays: list[np.ndarray]
    rows: int
    key: BatchKey
    future: asyncio.Future[Named]
    phases: Phases
    enqueued: float = field(default_factory=time.monotonic)


class Batcher:
    def __init__(
        self,
        run: RunFn,
        executor: Executor,
        config: BatchConfig,
        metrics: BatchObserver,
        device_type: str = "cpu",
    ) -> None:
        self._run = run
        self._max_in_flight = MAX_IN_FLIGHT.get(device_type, 1)
        self._executor = executor
        self.config = config
        self._metrics = metrics
        self._pending: deque[_Item] = deque()
        self._queued_rows = 0
        self._in_flight = 0
        self._splittable = True  # false once a model returns outputs without a batch dimension
        self.healthy = True  # false while a pass that ran past execution_timeout has not returned
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task = asyncio.get_running_loop().create_task(self._dispatch_loop())

    async def submit(self, arrays: list[np.ndarray], phases: Phases | None = None) -> Named:
        """The model's outputs for these rows; `phases`, when given, receives where the time went."""
        phases = Phases() if phases is None else phases
        if not self.healthy:
            raise self._still_hung()
        key = batch_key(arrays)
        if key is None or not self._splittable or self.config.max_batch_size <= 1:
            return await self._run_alone(arrays, phases)
        rows = int(arrays[0].shape[0])
        limit = self.config.max_queue_rows
        if limit and self._queued_rows + rows > limit:
            if rows > limit:
                raise RequestTooLarge(
                    f"the request has {rows} rows; this model queues at most {limit} rows (max_queue_rows). Split it into smaller requests."
                )
            raise QueueFull(
                f"the model's queue is full ({self._queued_rows} of {limit} rows waiting); retry "
                "after a short back-off, or scale out."
            )
        item = _Item(arrays, rows, key, asyncio.get_running_loop().create_future(), phases)
        if self._in_flight == 0 and not self._pending:
            # Idle device, empty queue: run now, on this task, without a trip through the dispatcher.
            self._in_flight += 1
            try:
                await self._execute([item])
            finally:
                self._in_flight -= 1
                self._wake.set()
            return item.future.result()
        self._pending.append(item)
        self._queued_rows += rows
        self._metrics.queue_rows(self._queued_rows)
        self._wake.set()
        return await item.future  # cancelling this leaves the batch alone: see _deliver

    def expire_queued(self, err: Exception) -> None:
        """Answer every request still waiting (not the running batches) with a copy of `err` each (the
        runtime tags each with its request id): the drain ran out."""
        for item in self._pending:
            _deliver(item, type(err)(*err.args))
        self._pending.clear()
        self._queued_rows = 0
        self._metrics.queue_rows(0)

    async def close(self) -> None:
        self._loop_task.cancel()
        for task in (self._loop_task, *self._tasks):
            with contextlib.suppress(BaseException):  # shutting down; results were delivered already
                await task
        for item in self._pending:
            if not item.future.done():
                item.future.set_exception(
                    Unloading("the model is being unloaded and this request was not run; retry it.")
                )
        self._pending.clear()

    async def _dispatch_loop(self) -> None:
        while True:
            self._drop_dead()
            if not self.healthy:  # nothing may queue behind a hung pass
                self.expire_queued(self._still_hung())
            if not self._pending or self._in_flight >= self._max_in_flight:
                await self._sleep(None)
                continue
            first = self._pending[0]
            compatible = sum(i.rows for i in self._pending if i.key == first.key)
            deadline = first.enqueued + self.config.max_batch_time
            now = time.monotonic()
            if self._in_flight == 0 or compatible >= self.config.max_batch_size or now >= deadline:
                self._launch(self._take(first.key))
            else:
                await self._sleep(deadline - now)

    async def _sleep(self, timeout: float | None) -> None:
        """Until woken, or `timeout` seconds. A timer sets the same event: no timeout exception, whose
        type differs between Python versions, and no task per wait as `asyncio.wait_for` makes."""
        self._wake.clear()
        timer = None if timeout is None else asyncio.get_running_loop().call_later(timeout, self._wake.set)
        try:
            await self._wake.wait()
        finally:
            if timer is not None:
                timer.cancel()

    def _drop_dead(self) -> None:
        """Cancelled requests leave the queue; ones that waited past queue_timeout fail before running."""
        timeout = self.config.queue_timeout
        now = time.monotonic()
        alive: deque[_Item] = deque()
        for item in self._pending:
            if item.future.done():
                self._queued_rows -= item.rows
            elif timeout and now - item.enqueued > timeout:
                self._queued_rows -= item.rows
                item.future.set_exception(
                    QueueTimeout(
                        f"the request waited {now - item.enqueued:.3f}s in the queue, more than "
                        f"queue_timeout ({timeout}s); it was not run. Retry, or scale out."
                    )
                )
            else:
                alive.append(item)
        self._pending = alive
        self._metrics.queue_rows(self._queued_rows)

    def _take(self, key: BatchKey) -> list[_Item]:
        """FIFO among compatible requests, up to max_batch_size rows (a larger request runs alone)."""
        taken: list[_Item] = []
        rows = 0
        rest: deque[_Item] = deque()
        for item in self._pending:
            if item.key == key and (not taken or rows + item.rows <= self.config.max_batch_size):
                taken.append(item)
                rows += item.rows
            else:
                rest.append(item)
        self._pending = rest
        self._queued_rows -= rows
        self._metrics.queue_rows(self._queued_rows)
        return taken

    def _launch(self, items: list[_Item]) -> None:
        self._in_flight += 1
        task = asyncio.get_running_loop().create_task(self._execute(items))
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._in_flight -= 1
        self._wake.set()

    async def _execute(self, items: list[_Item]) -> None:
        started = time.monotonic()
        for item in items:
            self._metrics.queue_wait(started - item.enqueued)
            item.phases.queue = started - item.enqueued
        try:
            batch = Phases()
            outputs = await self._forward(items, batch)
            if outputs is None:  # not splittable by rows: answer each request from its own pass
                await asyncio.gather(*(self._execute([i]) for i in items))
                return
            split_at = time.monotonic()
            answers = [outputs] if len(items) == 1 else split(outputs, [i.rows for i in items])
            batch.compute_output = time.monotonic() - split_at
            self._metrics.executed(batch)
            for item, answer in zip(items, answers, strict=True):
                _account(item.phases, batch)
                _deliver(item, answer)
        except ExecutionTimeout as err:  # the device hangs: re-running alone would queue behind it
            for item in items:
                _deliver(item, type(err)(*err.args))
        except Exception as err:
            if len(items) > 1:  # find the culprit: every other request still gets its answer
                await asyncio.gather(*(self._execute([i]) for i in items))
            else:
                _deliver(items[0], err)
        finally:
            for item in items:  # whatever happened above, no client is left waiting
                _deliver(item, RuntimeError("the batch ended without an answer for this request"))

    async def _forward(self, items: list[_Item], phases: Phases) -> Named | None:
        """One pass over the concatenated rows; on out-of-memory, halves and retries."""
        rows = sum(i.rows for i in items)
        padded = padded_rows(rows, self.config.preferred_batch_sizes) if self._splittable else rows
        merge_at = time.monotonic()
        arrays = concatenate([i.arrays for i in items], padded)
        phases.compute_input += time.monotonic() - merge_at
        try:
            outputs = await self._timed(arrays, padded, phases)
        except Exception as err:
            if not is_out_of_memory(err):
                raise
            if len(items) == 1:
                raise RequestTooLarge(
                    f"the request's {rows} rows do not fit in device memory even alone; send fewer "
                    "rows per request."
                ) from err
            outputs = None
        if outputs is None:  # out of memory: halve, outside the handler, with the batch's copy gone
            del arrays
            return await self._halves(items, rows, phases)
        if not has_batch_dimension(outputs, padded):
            if len(items) > 1 or padded > rows:
                self._splittable = False
                logger.warning("model outputs have no batch dimension: batching is off for this model")
                return None
            return outputs
        return [(name, a[:rows]) for name, a in outputs]

    async def _halves(self, items: list[_Item], rows: int, phases: Phases) -> Named | None:
        half = len(items) // 2
        logger.warning(
            "out of memory on %d rows; splitting the batch into %d + %d requests",
            rows,
            half,
            len(items) - half,
        )
        first = await self._forward(items[:half], phases)
        second = await self._forward(items[half:], phases)
        if first is None or second is None:
            return None
        return join(first, second)

    async def _timed(self, arrays: list[np.ndarray], rows: int, phases: Phases) -> Named:
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        running = loop.run_in_executor(self._executor, self._run, arrays)
        limit = self.config.execution_timeout
        if not limit:
            outputs = await running
        else:
            try:
                outputs = await asyncio.wait_for(asyncio.shield(running), limit)
            except TimeoutError:
                raise self._hung(running, rows, limit) from None
        seconds = time.monotonic() - started
        self._metrics.batch(rows, seconds)
        phases.compute_infer += seconds
        phases.rows = max(phases.rows, rows)
        return outputs

    async def _run_alone(self, arrays: list[np.ndarray], phases: Phases) -> Named:
        outputs = await self._timed(arrays, rows_of(arrays), phases)
        self._metrics.executed(phases)
        return outputs

    def _hung(self, running: asyncio.Future[Named], rows: int, limit: float) -> ExecutionTimeout:
        """Mark this copy unhealthy until the pass returns (its result is dropped then)."""
        self.healthy = False
        started = time.monotonic() - limit
        logger.error(
            "a forward pass of %d rows has run for %.1fs, past execution_timeout: this copy is unhealthy "
            "(readiness false) until it returns",
            rows,
            limit,
        )

        def recovered(done: asyncio.Future[Named]) -> None:
            self.healthy = True
            if not done.cancelled():
                done.exception()  # retrieved: a late failure is not "never retrieved"
            logger.warning(
                "the forward pass that hung returned after %.1fs: this copy is healthy again",
                time.monotonic() - started,
            )
            self._wake.set()

        running.add_done_callback(recovered)
        return ExecutionTimeout(
            f"the model's forward pass ran past execution_timeout ({limit}s) and was not answered; retry it "
            "(another replica may serve it)."
        )

    def _still_hung(self) -> ExecutionTimeout:
        return ExecutionTimeout(
            "this model copy's last forward pass ran past execution_timeout and has not returned; retry "
            "later or on another replica."
        )


def _account(request: Phases, batch: Phases) -> None:
    """A request's share of its batch: Triton counts the whole batch's compute time for each request."""
    request.compute_input += batch.compute_input
    request.compute_infer += batch.compute_infer
    request.compute_output += batch.compute_output
    request.rows = batch.rows


def _deliver(item: _Item, result: Named | BaseException) -> None:
    if item.future.done():  # the client went away: nobody to answer, nothing to fail
        return
    if isinstance(result, BaseException):
        item.future.set_exception(result)
    else:
        item.future.set_result(result)
