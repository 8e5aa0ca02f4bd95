"""Handing a pass to the model copy's threads and waiting for it, watched for `execution_timeout`.

One step on the executor thread (`run`), or, on a device that stages (a `Pipeline`: CUDA), two: the
pass is staged and launched on the executor thread and finished on the collector thread, so that the
executor thread stages the next batch while this one computes (engine/transfers.py). A pass that
runs past `execution_timeout` marks the copy unhealthy until it returns: a hung device cannot be
interrupted, only kept from taking more requests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, Protocol

import numpy as np

from ..common import Named, logger
from ..errors import ExecutionTimeout

RunFn = Callable[[list[np.ndarray]], Named]
Parts = list[list[np.ndarray]]  # each request's inputs


class Pipelined(Protocol):
    """A pass in two steps (inference.Predictor): queued on the executor thread, collected on another."""

    def launch(self, parts: Parts, rows: int | None) -> Any: ...

    def finish(self, launched: Any) -> Named: ...


Pipeline = tuple[Pipelined, Executor]  # the two steps, and the collector thread that finishes passes


class Offload:
    def __init__(
        self, run: RunFn, executor: Executor, pipeline: Pipeline | None, recovered: Callable[[], None]
    ) -> None:
        self._run = run
        self._executor = executor
        self._pipeline = pipeline
        self._recovered = recovered
        self.healthy = True  # false while a pass that ran past execution_timeout has not returned
        self._on_threads = 0  # passes handed to the model's threads and not yet back

    @property
    def busy(self) -> bool:
        return self._on_threads > 0

    async def run(
        self, parts: Parts, count: int | None, rows: int, limit: float
    ) -> tuple[Named, float, float, float | None]:
        """One pass over `parts` (padded to `count` rows; None: one request's inputs as they are; not
        pipelined: `parts` is one joined request). Returns the outputs, the executor thread's CPU and
        wall seconds (pipelined: the device's seconds where it measures them and they are longer), and
        pipelined, the seconds to stage and launch it."""
        if self._pipeline is not None:
            return await self._watched(self._pipelined(self._pipeline, parts, count), rows, limit)
        running = asyncio.get_running_loop().run_in_executor(self._executor, measured, self._run, parts[0])
        outputs, cpu, wall = await self._watched(running, rows, limit)
        return outputs, cpu, wall, None

    async def _pipelined(
        self, pipeline: Pipeline, parts: Parts, count: int | None
    ) -> tuple[Named, float, float, float]:
        pipe, collector = pipeline
        loop = asyncio.get_running_loop()
        done, cpu, launch = await loop.run_in_executor(
            self._executor, _launched, pipe, collector, parts, count
        )
        # Shielded: a cancelled wait must not cancel the finish, which frees the staging slot.
        outputs, device = await asyncio.shield(asyncio.wrap_future(done))
        return outputs, cpu, max(launch, device or 0.0), launch

    async def _watched(self, running: Any, rows: int, limit: float) -> Any:
        """`running`'s result; past `limit` seconds (0: none) the copy is marked hung."""
        self._on_threads += 1
        try:
            running = asyncio.ensure_future(running)
            if not limit:
                return await running
            try:
                return await asyncio.wait_for(asyncio.shield(running), limit)
            except TimeoutError:
                raise self._hung(running, rows, limit) from None
        finally:
            self._on_threads -= 1

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


def _launched(
    pipe: Pipelined, collector: Executor, parts: Parts, count: int | None
) -> tuple[Future[tuple[Named, float | None]], float, float]:
    """On the executor thread: launch the pass and queue its finish at once (so that it runs, and frees
    its staging slot, whatever becomes of the caller); returns that future and this thread's CPU and
    wall seconds."""
    cpu, wall = time.thread_time(), time.perf_counter()
    launched = pipe.launch(parts, count)
    seconds, cpu = time.perf_counter() - wall, time.thread_time() - cpu
    return collector.submit(_finished, pipe, launched), cpu, seconds


def _finished(pipe: Pipelined, launched: Any) -> tuple[Named, float | None]:
    outputs = pipe.finish(launched)
    return outputs, getattr(launched, "device_seconds", None)


def measured(run: RunFn, arrays: list[np.ndarray]) -> tuple[Named, float, float]:
    """On the calling thread: the outputs, and the pass's CPU and wall seconds on this thread."""
    cpu, wall = time.thread_time(), time.perf_counter()
    outputs = run(arrays)
    return outputs, time.thread_time() - cpu, time.perf_counter() - wall
