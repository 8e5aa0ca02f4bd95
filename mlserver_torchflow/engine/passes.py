"""The passes of one model copy: each batch on the executor thread, timed, isolated and watched.

A batch that fails is re-run request by request, so only the culprit fails; one that runs out of
device memory is halved; outputs without a batch dimension turn batching off. Each pass's time on its
own thread feeds the cost model per batch shape (dispatch.CostModel) and the measure of whether the
device computes on our cores (dispatch.CoreUse). A pass that runs past `execution_timeout` marks the
copy unhealthy until it returns.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

import numpy as np

from ..common import Named, logger, rows_of
from ..config import BatchConfig
from ..errors import ExecutionTimeout, RequestTooLarge
from .device import is_out_of_memory
from .dispatch import CoreUse, CostModel
from .merging import BatchKey, batch_key, concatenate, has_batch_dimension, join, padded_rows, split
from .phases import BatchObserver, Phases
from .queueing import Queued

RunFn = Callable[[list[np.ndarray]], Named]
MAX_SHAPES = 64  # batch shapes whose cost is remembered


class Passes:
    def __init__(
        self,
        run: RunFn,
        executor: Executor,
        config: BatchConfig,
        metrics: BatchObserver,
        core: CoreUse,
        recovered: Callable[[], None],
    ) -> None:
        self._run = run
        self._executor = executor
        self.config = config
        self._metrics = metrics
        self.core = core
        self._recovered = recovered
        self._costs: dict[BatchKey, CostModel] = {}
        self.splittable = True  # false once a model returns outputs without a batch dimension
        self.healthy = True  # false while a pass that ran past execution_timeout has not returned
        self._on_threads = 0  # passes handed to the model's thread and not yet back

    def cost(self, key: BatchKey) -> CostModel:
        cost = self._costs.get(key)
        if cost is None:
            if len(self._costs) >= MAX_SHAPES:
                self._costs.pop(next(iter(self._costs)))
            cost = self._costs[key] = CostModel()
        return cost

    def fits(self) -> list[tuple[float, float]]:
        return [c.fit() for c in self._costs.values() if c.known]

    async def execute(self, items: list[Queued], inline: bool = False) -> None:
        """Run `items` as one batch and answer each; `inline`: the caller found nobody else waiting, so
        a short pass may run on the event loop (`_inline`)."""
        started = time.monotonic()
        for item in items:
            self._metrics.queue_wait(started - item.enqueued)
            item.phases.queue = started - item.enqueued
        try:
            batch = Phases()
            outputs = await self._forward(items, batch, inline)
            if outputs is None:  # not splittable by rows: answer each request from its own pass
                await asyncio.gather(*(self.execute([i]) for i in items))
                return
            split_at = time.monotonic()
            answers = [outputs] if len(items) == 1 else split(outputs, [i.rows for i in items])
            batch.compute_output = time.monotonic() - split_at
            self._metrics.executed(batch)
            for item, answer in zip(items, answers, strict=True):
                _account(item.phases, batch)
                deliver(item, answer)
        except ExecutionTimeout as err:  # the device hangs: re-running alone would queue behind it
            for item in items:
                deliver(item, type(err)(*err.args))
        except Exception as err:
            if len(items) > 1:  # find the culprit: every other request still gets its answer
                await asyncio.gather(*(self.execute([i]) for i in items))
            else:
                deliver(items[0], err)
        finally:
            for item in items:  # whatever happened above, no client is left waiting
                deliver(item, RuntimeError("the batch ended without an answer for this request"))

    async def _forward(self, items: list[Queued], phases: Phases, inline: bool = False) -> Named | None:
        """One pass over the concatenated rows; on out-of-memory, halves and retries."""
        rows = sum(i.rows for i in items)
        padded = padded_rows(rows, self.config.preferred_batch_sizes) if self.splittable else rows
        merge_at = time.monotonic()
        arrays = concatenate([i.arrays for i in items], padded)
        phases.compute_input += time.monotonic() - merge_at
        try:
            outputs = await self._timed(arrays, padded, phases, items[0].key, inline)
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
                self.splittable = False
                logger.warning("model outputs have no batch dimension: batching is off for this model")
                return None
            return outputs
        return [(name, a[:rows]) for name, a in outputs]

    async def _halves(self, items: list[Queued], rows: int, phases: Phases) -> Named | None:
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

    async def _timed(
        self,
        arrays: list[np.ndarray],
        rows: int,
        phases: Phases,
        key: BatchKey | None = None,
        inline: bool = True,
    ) -> Named:
        started = time.monotonic()
        limit = self.config.execution_timeout
        if inline and self.may_inline(key, rows):
            outputs, cpu, wall = _measured(self._run, arrays)
        else:
            outputs, cpu, wall = await self._on_thread(arrays, rows, limit)
        seconds = time.monotonic() - started
        self.core.observe(cpu, wall)
        if key is not None:  # the pass's own time, on its thread: what the device costs
            self.cost(key).observe(rows, wall)
        self._metrics.batch(rows, seconds)
        phases.compute_infer += seconds
        phases.rows = max(phases.rows, rows)
        return outputs

    def may_inline(self, key: BatchKey | None, rows: int) -> bool:
        """May this pass run on the event loop itself? Only a short one (`inline_pass_seconds`, from the
        cost fit) computing on our own cores, with the model's thread idle and no execution_timeout (a
        pass that hung there would stop the server). Handing a pass to a thread and back costs two
        wake-ups, more than a small CPU model's whole pass. The batcher also checks that nobody else is
        waiting: the loop takes no requests in meanwhile, so under load they would never form a batch."""
        threshold = self.config.inline_pass_seconds
        if not threshold or self.config.execution_timeout or self._on_threads or key is None:
            return False
        cost = self._costs.get(key)
        return cost is not None and cost.known and self.core.on_core and cost.predict(rows) <= threshold

    async def _on_thread(
        self, arrays: list[np.ndarray], rows: int, limit: float
    ) -> tuple[Named, float, float]:
        loop = asyncio.get_running_loop()
        self._on_threads += 1
        try:
            running = loop.run_in_executor(self._executor, _measured, self._run, arrays)
            if not limit:
                return await running
            try:
                return await asyncio.wait_for(asyncio.shield(running), limit)
            except TimeoutError:
                raise self._hung(running, rows, limit) from None
        finally:
            self._on_threads -= 1

    async def run_alone(self, arrays: list[np.ndarray], phases: Phases) -> Named:
        outputs = await self._timed(arrays, rows_of(arrays), phases, batch_key(arrays))
        self._metrics.executed(phases)
        return outputs

    def _hung(self, running: asyncio.Future[Any], rows: int, limit: float) -> ExecutionTimeout:
        """Mark this copy unhealthy until the pass returns (its result is dropped then)."""
        self.healthy = False
        started = time.monotonic() - limit
        logger.error(
            "a forward pass of %d rows has run for %.1fs, past execution_timeout: this copy is unhealthy "
            "(readiness false) until it returns",
            rows,
            limit,
        )

        def recovered(done: asyncio.Future[Any]) -> None:
            self.healthy = True
            if not done.cancelled():
                done.exception()  # retrieved: a late failure is not "never retrieved"
            logger.warning(
                "the forward pass that hung returned after %.1fs: this copy is healthy again",
                time.monotonic() - started,
            )
            self._recovered()

        running.add_done_callback(recovered)
        return ExecutionTimeout(
            f"the model's forward pass ran past execution_timeout ({limit}s) and was not answered; retry it "
            "(another replica may serve it)."
        )

    def still_hung(self) -> ExecutionTimeout:
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


def deliver(item: Queued, result: Named | BaseException) -> None:
    if item.future.done():  # the client went away: nobody to answer, nothing to fail
        return
    if isinstance(result, BaseException):
        item.future.set_exception(result)
    else:
        item.future.set_result(result)


def _measured(run: RunFn, arrays: list[np.ndarray]) -> tuple[Named, float, float]:
    """On the executor thread: the outputs, and the pass's CPU and wall seconds on this thread."""
    cpu, wall = time.thread_time(), time.perf_counter()
    outputs = run(arrays)
    return outputs, time.thread_time() - cpu, time.perf_counter() - wall
