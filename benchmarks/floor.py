"""The floor: an MLServer runtime that answers at once, i.e. MLServer 1.7.1's own protocol cost.

It returns zeros of shape [rows, 10] FP32 (rows = the first input's first dimension) without decoding the
input data or computing anything, so its throughput is the ceiling that any runtime on the same MLServer can
reach with the same client, and its latency the least one can see. `run.py` starts it with
`implementation: floor.FloorRuntime` and `benchmarks/` on PYTHONPATH.

It also answers `GET /v2/models/{name}/config` (Triton's model config, built from the inputs/outputs that
run.py declares in its model-settings.json), which MLServer itself lacks: that lets `run.py --perf-analyzer
--perf-analyzer-on floor` check the perf_analyzer step end to end. The extra route does not touch the
inference path.

Over gRPC it still pays for MLServer's conversion of the request (raw_input_contents are unpacked into
Python lists by MLServer's converter) and of the response, as any runtime on MLServer does.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mlserver import MLModel
from mlserver.handlers import custom_handler
from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput

OUTPUT_WIDTH = 10


def rows_of(payload: InferenceRequest) -> int:
    """The first input's first dimension (1 without inputs or a shape)."""
    shape = payload.inputs[0].shape if payload.inputs else [1]
    return int(shape[0]) if shape else 1


class FloorRuntime(MLModel):
    async def load(self) -> bool:
        self._zeros: dict[int, list[float]] = {}
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        rows = rows_of(payload)
        data = self._zeros.get(rows)
        if data is None:
            data = self._zeros[rows] = [0.0] * (rows * OUTPUT_WIDTH)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[ResponseOutput(name="output-0", shape=[rows, OUTPUT_WIDTH], datatype="FP32", data=data)],
        )

    @custom_handler(rest_path="/v2/models/{model_name}/config", rest_method="GET")
    async def triton_config(self, model_name: str) -> dict[str, Any]:
        """Triton's model config (JSON form), the minimum perf_analyzer reads: no batching dimension."""

        def tensors(specs: Any) -> list[dict[str, Any]]:
            return [
                {
                    "name": t.name,
                    "data_type": f"TYPE_{t.datatype.value if hasattr(t.datatype, 'value') else t.datatype}",
                    "dims": list(t.shape),
                }
                for t in specs or []
            ]

        return {
            "name": self.name,
            "platform": "mlserver-floor",
            "backend": "python",
            "max_batch_size": 0,
            "input": tensors(self.inputs),
            "output": tensors(self.outputs),
        }


GUARD_S = 0.05  # a batch short of every client goes after this long (clients that stopped; fewer clients)


class IdealFloor(FloorRuntime):
    """Batching that knows its clients, on MLServer's own path: the bound of an ideal device, realised here.

    A simulated device's pass (model-settings extra `fixed_s` + `per_row_s` x rows) is a wait on a thread of
    its own, one at a time. A request waits until every client of the closed loop is in (as many as were
    ever outstanding at once; `GUARD_S` after the first, fewer will do), then one pass answers them all.
    A lone client's request goes at once: at 1 client this is the least latency any runtime on this
    MLServer can show for that pass, more than the floor's p50 plus F + R, because a machine left idle
    for the pass wakes up slower. At C clients it is what a batcher with a perfect policy reaches on this
    machine and MLServer's path, its front end run cold after each pass: dispatch.py compares ours with it.
    """

    async def load(self) -> bool:
        extra = (self.settings.parameters.extra if self.settings.parameters else None) or {}
        self._fixed, self._per_row = float(extra.get("fixed_s", 0.0)), float(extra.get("per_row_s", 0.0))
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="ideal-floor")
        self._waiting: list[tuple[int, asyncio.Future[None]]] = []
        self._outstanding = self._clients = 0
        self._running = False
        self._guard: asyncio.TimerHandle | None = None
        return await super().load()

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        done = asyncio.get_running_loop().create_future()
        self._waiting.append((rows_of(payload), done))
        self._outstanding += 1
        self._clients = max(self._clients, self._outstanding)
        try:
            self._next()
            await done
        finally:
            self._outstanding -= 1
        return await super().predict(payload)

    def _next(self) -> None:
        if self._running or not self._waiting:
            return
        if len(self._waiting) < self._clients:
            if self._guard is None:
                self._guard = asyncio.get_running_loop().call_later(GUARD_S, self._give_up)
            return
        if self._guard is not None:
            self._guard.cancel()
            self._guard = None
        batch, self._waiting, self._running = self._waiting, [], True
        asyncio.get_running_loop().create_task(self._pass(batch))

    def _give_up(self) -> None:
        self._guard, self._clients = None, self._outstanding
        self._next()

    async def _pass(self, batch: list[tuple[int, asyncio.Future[None]]]) -> None:
        wait = self._fixed + self._per_row * sum(rows for rows, _ in batch)
        try:
            await asyncio.get_running_loop().run_in_executor(self._thread, time.sleep, wait)
        finally:
            for _, done in batch:
                if not done.done():
                    done.set_result(None)
            self._running = False
            self._next()
