"""The passes of one model copy: each batch on the executor thread, timed, isolated and watched.

A batch that fails is re-run request by request, so only the culprit fails; one that runs out of
device memory is halved; outputs without a batch dimension turn batching off. Each pass's time on its
own thread feeds the cost model per batch shape (dispatch.CostModel) and the measure of whether the
device computes on our cores (dispatch.CoreUse). A pass that runs past `execution_timeout` marks the
copy unhealthy until it returns.

On a device that stages (a `Pipeline`: CUDA), the requests' rows go to the executor thread unjoined,
to be written once into pinned staging there; the pass is launched on that thread and finished on the
collector thread, so the next batch is staged while this one computes (engine/transfers.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor

import numpy as np

from ..common import Named, logger, rows_of
from ..config import BatchConfig
from ..errors import ExecutionTimeout, RequestTooLarge
from .device import is_out_of_memory
from .dispatch import CoreUse, CostModel
from .merging import BatchKey, batch_key, concatenate, has_batch_dimension, join, padded_rows, split
from .offload import Offload, Parts, Pipeline, RunFn, measured
from .phases import BatchObserver, Phases
from .queueing import Queued

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
        pipeline: Pipeline | None = None,
    ) -> None:
        self._run = run
        self._pipelined = pipeline is not None
        self._offload = Offload(run, executor, pipeline, recovered)
        self.config = config
        self._metrics = metrics
        self.core = core
        self._costs: dict[BatchKey, CostModel] = {}
        self._stagings: dict[BatchKey, CostModel] = {}  # pipelined: the executor thread's part of a pass
        self.splittable = True  # false once a model returns outputs without a batch dimension

    def cost(self, key: BatchKey) -> CostModel:
        return _model(self._costs, key)

    def staging(self, key: BatchKey) -> CostModel:
        """Pipelined: the time to stage and launch a batch, which must start before the running pass
        ends for the device not to wait (no samples otherwise: it predicts 0)."""
        return _model(self._stagings, key)

    def calibrate(self, key: BatchKey | None, samples: list[tuple[int, float, float]]) -> None:
        """Seed the cost model of batch shape `key` and the core-use measure with timed warm-up passes
        (rows, thread CPU seconds, wall seconds): warmup.calibrate."""
        if key is None:
            return
        for rows, cpu, wall in samples:
            self.core.observe(cpu, wall)
            self.cost(key).observe(rows, wall)

    def describe(self) -> str:
        """The cost fit of the latest batch shape, for metadata and logs."""
        fits = [c.fit() for c in self._costs.values() if c.known]
        return f"; pass ~{fits[-1][0] * 1e3:.2f} ms + {fits[-1][1] * 1e3:.3f} ms/row" if fits else ""

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
        parts = [i.arrays for i in items]
        count: int | None = padded
        if not self._pipelined:  # joined here; a pipeline writes the rows once, into its staging
            merge_at = time.monotonic()
            parts, count = [concatenate(parts, padded)], None
            phases.compute_input += time.monotonic() - merge_at
        try:
            outputs = await self._timed(parts, count, padded, phases, items[0].key, inline)
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
            del parts
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
        parts: Parts,
        count: int | None,
        rows: int,
        phases: Phases,
        key: BatchKey | None = None,
        inline: bool = True,
    ) -> Named:
        """One pass over `parts` padded to `count` rows (None: one request's inputs as they are)."""
        started = time.monotonic()
        limit = self.config.execution_timeout
        if inline and self.may_inline(key, rows):
            (outputs, cpu, wall), launch = measured(self._run, parts[0]), None
        else:
            outputs, cpu, wall, launch = await self._offload.run(parts, count, rows, limit)
        seconds = time.monotonic() - started
        self.core.observe(cpu, wall)
        if key is not None:  # the pass's own time, on its threads and device: what the device costs
            self.cost(key).observe(rows, wall)
            if launch is not None:
                self.staging(key).observe(rows, launch)
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
        busy = self._offload.busy or self._pipelined
        if not threshold or self.config.execution_timeout or busy or key is None:
            return False
        cost = self._costs.get(key)
        return cost is not None and cost.known and self.core.on_core and cost.predict(rows) <= threshold

    @property
    def healthy(self) -> bool:
        """False while a pass that ran past execution_timeout has not returned."""
        return self._offload.healthy

    def still_hung(self) -> ExecutionTimeout:
        return self._offload.still_hung()

    async def run_alone(self, arrays: list[np.ndarray], phases: Phases) -> Named:
        outputs = await self._timed([arrays], None, rows_of(arrays), phases, batch_key(arrays))
        self._metrics.executed(phases)
        return outputs


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


def _model(models: dict[BatchKey, CostModel], key: BatchKey) -> CostModel:
    model = models.get(key)
    if model is None:
        if len(models) >= MAX_SHAPES:
            models.pop(next(iter(models)))
        model = models[key] = CostModel()
    return model
