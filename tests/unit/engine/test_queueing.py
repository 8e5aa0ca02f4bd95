"""Triton's queue policy in the batcher, with a real model on a real executor thread: priority order,
per-level caps, per-request timeouts with both actions, and what the metrics count."""

from __future__ import annotations

import asyncio
import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from prometheus_client import REGISTRY

from mlserver_torchflow.config import LevelPolicy, load_settings
from mlserver_torchflow.engine.batching import Batcher
from mlserver_torchflow.engine.queueing import level_of, timeout_of
from mlserver_torchflow.errors import InvalidInput, ModelLoadError, QueueFull, QueueTimeout
from mlserver_torchflow.protocol.scheduling import scheduling
from mlserver_torchflow.serving.metrics import BatchMetrics
from tests.unit.engine.test_batching import Recorder, mlp_run, rows_of


def policy_batcher(name: str, recorder: Recorder, **extra: Any) -> Batcher:
    settings = load_settings({"max_batch_size": 4, "max_batch_time": 0.001, "compute_on": "host", **extra})
    return Batcher(
        recorder, ThreadPoolExecutor(max_workers=1), settings.batch_config(), BatchMetrics(name, "cpu")
    )


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_levels_and_timeouts_resolve_as_triton_does() -> None:
    config = load_settings(
        {
            "priority_levels": 3,
            "priority_queue_policy": {"1": {"default_timeout_microseconds": 5000}},
            "queue_timeout": 2.0,
        }
    ).batch_config()
    assert config.default_level == 3  # default: the lowest level
    assert [level_of(config, p) for p in (0, 1, 2, 3, 4, 99)] == [2, 0, 1, 2, 2, 2]
    assert timeout_of(config, 0, None) == (0.005, "level 1's default_timeout_microseconds")
    assert timeout_of(config, 0, 250) == (0.00025, "the request's timeout parameter")
    assert timeout_of(config, 1, None) == (2.0, "queue_timeout")
    strict = load_settings({"default_queue_policy": {"allow_timeout_override": False}}).batch_config()
    assert strict.levels == (LevelPolicy(allow_timeout_override=False),)
    assert timeout_of(strict, 0, 250) == (0.0, "queue_timeout")


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"priority_levels": 2, "default_priority_level": 3}, "default_priority_level 3 is above"),
        ({"priority_levels": 2, "priority_queue_policy": {"5": {}}}, "names levels [5]"),
        ({"default_queue_policy": {"timeout_action": "drop"}}, "timeout_action"),
        ({"default_queue_policy": {"max_queue_sise": 3}}, "max_queue_sise"),
    ],
)
def test_bad_policies_fail_the_load_naming_the_key(extra: dict[str, Any], needle: str) -> None:
    with pytest.raises(ModelLoadError, match="invalid TorchFlow settings") as err:
        load_settings(extra)
    assert needle in str(err.value)


def test_scheduling_parameters_are_checked() -> None:
    from mlserver.types import Parameters

    assert scheduling(None) == (0, None)
    assert scheduling(Parameters(priority=2, timeout=1000)) == (2, 1000)
    for bad in ({"priority": -1}, {"priority": "high"}, {"timeout": 1.5}, {"timeout": True}):
        with pytest.raises(InvalidInput, match=repr(next(iter(bad)))):
            scheduling(Parameters(**bad))


@pytest.mark.parametrize("compute_on", ["host", "device"])
def test_higher_priority_requests_go_first(compute_on: str) -> None:
    _, run = mlp_run()
    recorder = Recorder(run, delay=0.2)
    order: list[str] = []

    async def main() -> None:
        batch = policy_batcher(
            f"t-prio-{compute_on}", recorder, priority_levels=2, max_batch_size=2, compute_on=compute_on
        )
        for seed in (50, 51):  # the cost fit learns what a pass takes
            await batch.submit([rows_of(1, seed)])
        order.clear()

        async def one(tag: str, priority: int, seed: int) -> None:
            await batch.submit([rows_of(1, seed)], priority=priority)
            order.append(tag)

        busy = asyncio.create_task(one("busy", 2, 0))
        await asyncio.sleep(0.05)  # the device is busy: the rest queue behind it
        low = [asyncio.create_task(one(f"low{i}", 2, 1 + i)) for i in range(2)]
        await asyncio.sleep(0.01)
        high = [asyncio.create_task(one(f"high{i}", 1, 10 + i)) for i in range(2)]
        await asyncio.gather(busy, *low, *high)
        await batch.close()

    asyncio.run(main())
    assert order[0] == "busy"
    assert set(order[1:3]) == {"high0", "high1"}, order  # queued later, served first
    assert recorder.batches == [1, 1, 1, 2, 2]


def test_a_full_level_refuses_with_a_503_and_counts_it() -> None:
    _, run = mlp_run()
    recorder = Recorder(run, delay=0.2)
    name = "t-cap"

    async def main() -> list[Any]:
        batch = policy_batcher(
            name, recorder, priority_levels=2, priority_queue_policy={"1": {"max_queue_size": 1}}
        )
        busy = asyncio.create_task(batch.submit([rows_of(1, 0)]))
        await asyncio.sleep(0.05)
        queued = [asyncio.create_task(batch.submit([rows_of(1, s)], priority=1)) for s in (1, 2)]
        other = asyncio.create_task(batch.submit([rows_of(1, 3)], priority=2))  # its level has room
        results = await asyncio.gather(busy, *queued, other, return_exceptions=True)
        await batch.close()
        return results

    results = asyncio.run(main())
    refused = [r for r in results if isinstance(r, QueueFull)]
    assert len(refused) == 1 and refused[0].status_code == 503
    assert "priority level 1 is full (1 of 1 requests" in str(refused[0]) and "retry" in str(refused[0])
    assert sum(not isinstance(r, Exception) for r in results) == 3
    labels = {"model": name, "device": "cpu", "priority": "1", "reason": "full"}
    assert metric("torchflow_queue_rejected_total", **labels) == 1


def test_a_request_timeout_rejects_it_unrun_when_it_expires() -> None:
    _, run = mlp_run()
    recorder = Recorder(run, delay=0.4)
    name = "t-timeout"

    async def main() -> tuple[list[Any], float]:
        batch = policy_batcher(name, recorder)
        busy = asyncio.create_task(batch.submit([rows_of(1, 0)]))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        timed = asyncio.create_task(batch.submit([rows_of(1, 1)], timeout_us=50_000))
        patient = asyncio.create_task(batch.submit([rows_of(1, 2)]))
        with contextlib.suppress(QueueTimeout):
            await timed
        expired_after = time.monotonic() - started
        results = await asyncio.gather(busy, timed, patient, return_exceptions=True)
        await batch.close()
        return results, expired_after

    results, expired_after = asyncio.run(main())
    assert isinstance(results[1], QueueTimeout) and results[1].status_code == 503
    assert "the request's timeout parameter" in str(results[1])
    assert expired_after < 0.3, "the 503 waited for the running pass instead of the request's timeout"
    assert not isinstance(results[0], Exception) and not isinstance(results[2], Exception)
    assert recorder.batches == [1, 1]  # the timed-out request never ran
    labels = {"model": name, "device": "cpu", "priority": "1", "reason": "timeout"}
    assert metric("torchflow_queue_rejected_total", **labels) == 1


def test_delay_keeps_an_expired_request_behind_those_in_time() -> None:
    _, run = mlp_run()
    recorder = Recorder(run, delay=0.2)
    order: list[str] = []

    async def main() -> None:
        batch = policy_batcher(
            "t-delay", recorder, max_batch_size=2, default_queue_policy={"timeout_action": "delay"}
        )

        async def one(tag: str, timeout_us: int | None, seed: int) -> None:
            await batch.submit([rows_of(1, seed)], timeout_us=timeout_us)
            order.append(tag)

        busy = asyncio.create_task(one("busy", None, 0))
        await asyncio.sleep(0.05)
        hasty = asyncio.create_task(one("hasty", 10_000, 1))  # expires long before the device frees
        await asyncio.sleep(0.01)
        calm = [asyncio.create_task(one(f"calm{i}", None, 2 + i)) for i in range(2)]
        await asyncio.gather(busy, hasty, *calm)
        await batch.close()

    asyncio.run(main())
    assert order == ["busy", "calm0", "calm1", "hasty"]  # delayed, answered all the same
