"""The dispatch benchmark's ideal floor (benchmarks/floor.py): batching that knows its clients.

dispatch.py reads ours against it as "the best any policy reaches on this machine", so it must be what it
says: one pass for every client of a closed loop, at once for a lone client, and never stuck when fewer
clients come back. Run in-process on MLServer's own runtime class, with a short simulated pass.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from mlserver.settings import ModelParameters, ModelSettings
from mlserver.types import InferenceRequest, RequestInput

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import floor

FIXED, PER_ROW = 0.004, 0.001


def _request(rows: int = 1) -> InferenceRequest:
    data = [0.0] * (rows * 16)
    return InferenceRequest(inputs=[RequestInput(name="x", shape=[rows, 16], datatype="FP32", data=data)])


async def _floor() -> tuple[floor.IdealFloor, list[int]]:
    """A loaded IdealFloor and the row counts of the passes it runs, in order."""
    settings = ModelSettings(
        name="sim",
        implementation=floor.IdealFloor,
        parameters=ModelParameters(extra={"fixed_s": FIXED, "per_row_s": PER_ROW}),
    )
    model = floor.IdealFloor(settings)
    await model.load()
    passes: list[int] = []
    run = model._pass

    async def counted(batch: list) -> None:
        passes.append(sum(rows for rows, _ in batch))
        await run(batch)

    model._pass = counted  # type: ignore[method-assign]
    return model, passes


def test_a_closed_loop_of_clients_goes_in_one_pass_each_round() -> None:
    async def main() -> list[int]:
        model, passes = await _floor()

        async def client() -> None:
            for _ in range(6):
                answer = await model.predict(_request())
                assert answer.outputs[0].shape == [1, floor.OUTPUT_WIDTH]

        await asyncio.gather(*(client() for _ in range(5)))
        return passes

    passes = asyncio.run(main())
    assert sum(passes) == 30, f"every request in exactly one pass: {passes}"
    # The first request goes alone (one client seen so far): that client runs a round ahead, so its last
    # request is in no full round.
    assert passes[0] == 1 and passes[1:-1] == [5] * 5, f"each round one pass of all 5 clients: {passes}"


def test_a_lone_request_goes_at_once_and_fewer_clients_are_not_waited_for_long() -> None:
    async def main() -> tuple[float, float, list[int]]:
        model, passes = await _floor()
        started = time.monotonic()
        await model.predict(_request(3))
        alone = time.monotonic() - started
        await asyncio.gather(*(model.predict(_request()) for _ in range(4)))  # 4 clients seen
        started = time.monotonic()
        await model.predict(_request())  # then 1 of them comes back: its batch goes after GUARD_S
        return alone, time.monotonic() - started, passes

    alone, fewer, passes = asyncio.run(main())
    assert passes[0] == 3 and alone < FIXED + 3 * PER_ROW + 0.02, f"a lone request waited: {alone:.4f} s"
    assert floor.GUARD_S <= fewer < floor.GUARD_S + 0.05, f"one client of four waited {fewer:.4f} s"
    assert passes[-1] == 1
