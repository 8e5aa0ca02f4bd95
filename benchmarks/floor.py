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


class FloorRuntime(MLModel):
    async def load(self) -> bool:
        self._zeros: dict[int, list[float]] = {}
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        shape = payload.inputs[0].shape if payload.inputs else [1]
        rows = int(shape[0]) if shape else 1
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


class WaitingFloor(FloorRuntime):
    """The floor that first waits `wait_s` seconds (model-settings extra) on a thread of its own, as a pass
    on a device keeps the host waiting: the least 1-client latency any runtime on this MLServer can show for
    a model whose pass takes that long. It is more than the floor's p50 plus the wait: a machine left idle
    for the wait wakes up slower (dispatch.py runs it at 1 client beside each simulated device)."""

    async def load(self) -> bool:
        extra = (self.settings.parameters.extra if self.settings.parameters else None) or {}
        self._wait = float(extra.get("wait_s", 0.0))
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="waiting-floor")
        return await super().load()

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        await asyncio.get_running_loop().run_in_executor(self._thread, time.sleep, self._wait)
        return await super().predict(payload)
