"""The batcher with a real model on a real executor thread: attribution, isolation, back-pressure,
cancellation, out-of-memory splitting. Each test records the batches the model really saw."""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import torch
from mlserver.batching import load_batching
from mlserver.settings import ModelParameters, ModelSettings

from mlserver_torchflow import TorchFlowRuntime
from mlserver_torchflow.common import Named
from mlserver_torchflow.config import BatchConfig
from mlserver_torchflow.engine import dispatch
from mlserver_torchflow.engine.batching import Batcher
from mlserver_torchflow.engine.inference import Predictor
from mlserver_torchflow.engine.merging import batch_key
from mlserver_torchflow.errors import QueueFull, QueueTimeout, RequestTooLarge, Retryable, Unloading
from mlserver_torchflow.protocol.signature import Interface
from mlserver_torchflow.serving.metrics import BatchMetrics
from tests import builders as b


class Recorder:
    """Wraps a forward function: records the row count of every pass, optionally slows it down."""

    def __init__(self, run: Callable[[list[np.ndarray]], Named], delay: float = 0.0) -> None:
        self.run, self.delay = run, delay
        self.batches: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, arrays: list[np.ndarray]) -> Named:
        with self.lock:
            self.batches.append(int(arrays[0].shape[0]))
        time.sleep(self.delay)
        return self.run(arrays)


def mlp_run() -> tuple[torch.nn.Module, Callable[[list[np.ndarray]], Named]]:
    model = b.build(b.MLP)
    return model, Predictor(model, torch.device("cpu"), None, Interface(inputs=None, outputs=None)).run


def batcher(run: Any, **config: Any) -> Batcher:
    cfg = BatchConfig(**{"max_batch_size": 16, "max_batch_time": 0.01, **config})
    return Batcher(run, ThreadPoolExecutor(max_workers=1), cfg, BatchMetrics(f"test-{id(run)}", "cpu"))


def rows_of(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 4), dtype=np.float32)


def test_many_concurrent_requests_each_get_their_own_rows() -> None:
    model, run = mlp_run()
    recorder = Recorder(run, delay=0.01)

    async def main() -> None:
        batch = batcher(recorder, max_batch_size=16)
        inputs = [rows_of(1 + i % 7, i) for i in range(60)]
        results = await asyncio.gather(*(batch.submit([x]) for x in inputs))
        for x, named in zip(inputs, results):
            assert [n for n, _ in named] == ["output-0"]
            np.testing.assert_allclose(named[0][1], b.reference(model, x), rtol=1e-5, atol=1e-6)
        await batch.close()

    asyncio.run(main())
    assert sum(recorder.batches) == sum(1 + i % 7 for i in range(60))
    assert max(recorder.batches) <= 16, "a batch went past max_batch_size rows"
    assert len(recorder.batches) < 60 / 2, f"requests were hardly merged: {recorder.batches}"


def test_an_idle_device_runs_a_lone_request_at_once() -> None:
    _, run = mlp_run()

    async def main() -> float:
        batch = batcher(run, max_batch_time=2.0)
        await batch.submit([rows_of(1, 0)])  # warm the thread
        started = time.monotonic()
        await batch.submit([rows_of(1, 1)])
        elapsed = time.monotonic() - started
        await batch.close()
        return elapsed

    assert asyncio.run(main()) < 1.0, "a lone request waited for the batch window"


@pytest.mark.parametrize(("compute_on", "in_flight"), [("host", 1), ("device", 2)])
def test_arrivals_during_a_busy_pass_form_one_batch(
    compute_on: str, in_flight: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows that arrive while a pass runs form one batch. On the server's cores it is handed over when
    the pass ends; off them, about LEAD before the pass is expected to end (from the cost fit), so that
    it is already waiting on the model's thread: two batches in flight, and still every row in it."""
    # 50 ms instead of 2: a loaded CI machine can wake the event loop that late, and the hand-over
    # must still come before the pass ends for this test to see two batches in flight
    monkeypatch.setattr(dispatch, "LEAD", 0.05)
    _, run = mlp_run()
    recorder = Recorder(run, delay=0.3)
    seen: list[int] = []

    async def main() -> None:
        cfg = BatchConfig(max_batch_size=64, max_batch_time=0.01, compute_on=compute_on)
        batch = Batcher(
            recorder, ThreadPoolExecutor(max_workers=1), cfg, BatchMetrics(f"t-if-{compute_on}", "cpu")
        )

        def watched(arrays: list[np.ndarray]) -> Named:
            out = recorder(arrays)
            seen.append(batch._in_flight)  # as the pass returns: what else was handed over
            return out

        batch._passes._offload._run = watched
        for seed in (10, 11, 12):  # the cost fit learns that a pass takes 0.3 s
            await batch.submit([rows_of(1, seed)])
        first = asyncio.create_task(batch.submit([rows_of(1, 1)]))
        await asyncio.sleep(0.05)  # the pass is running
        early = [asyncio.create_task(batch.submit([rows_of(1, s)])) for s in range(2, 4)]
        await asyncio.sleep(0.1)  # past max_batch_time
        late = [asyncio.create_task(batch.submit([rows_of(1, s)])) for s in range(4, 7)]
        await asyncio.gather(first, *early, *late)
        await batch.close()

    asyncio.run(main())
    assert recorder.batches == [1, 1, 1, 1, 5]
    assert max(seen) == in_flight, seen


@pytest.mark.parametrize("compute_on", ["host", "device"])
def test_a_pass_ends_before_its_answers_are_written(compute_on: str) -> None:
    """The batcher's clock (the return lag, the gap) starts when the pass ends, not after every answered
    request's task has run: those write their answers on the event loop first, 5 ms each here, and
    counting that as the device's time made the round trip look longer. It also notes when they have
    all run: until then the loop reads no request, so a request left waiting counts its wait for company
    (max_batch_time) from there."""
    _, run = mlp_run()
    recorder = Recorder(run, delay=0.02)
    resumed: list[float] = []
    ended: list[float] = []
    answered: list[float] = []

    async def main() -> None:
        batch = batcher(recorder, compute_on=compute_on)

        async def client(seed: int) -> None:
            await batch.submit([rows_of(1, seed)])
            resumed.append(time.monotonic())
            time.sleep(0.005)  # writing the answer, on the loop

        await asyncio.gather(*(client(s) for s in range(4)))
        await asyncio.sleep(0)  # the answers' note is a callback queued behind the answered tasks
        ended.append(batch._freed)  # when the last pass ended, as the batcher saw it
        answered.append(batch._answered)
        await batch.close()

    asyncio.run(main())
    assert recorder.batches[-1] >= 2, recorder.batches  # the last pass answered several clients
    # it ended before the first of them resumed, not after all of them had written their answers
    assert ended[0] < resumed[-1] - 0.004, (ended, resumed)
    assert answered[0] >= resumed[-1] + 0.005, (answered, resumed)  # and its answers went out after


def test_a_request_over_max_batch_size_runs_alone_and_whole() -> None:
    model, run = mlp_run()
    recorder = Recorder(run)

    async def main() -> None:
        batch = batcher(recorder, max_batch_size=8)
        big = rows_of(50, 3)
        (named,) = await asyncio.gather(batch.submit([big]))
        np.testing.assert_allclose(named[0][1], b.reference(model, big), rtol=1e-5, atol=1e-6)
        await batch.close()

    asyncio.run(main())
    assert recorder.batches == [50]


def test_different_trailing_shapes_or_dtypes_are_never_merged() -> None:
    seen: list[tuple[tuple[int, ...], str]] = []

    def double(arrays: list[np.ndarray]) -> Named:
        seen.append((arrays[0].shape, arrays[0].dtype.str))
        time.sleep(0.02)
        return [("output-0", arrays[0] * 2)]

    async def main() -> None:
        batch = batcher(double)
        inputs = [
            np.ones((2, 3), np.float32),
            np.ones((2, 5), np.float32),
            np.ones((1, 3), np.float64),
            np.ones((3, 3), np.float32),
        ]
        results = await asyncio.gather(*(batch.submit([x]) for x in inputs))
        for x, named in zip(inputs, results):
            assert named[0][1].shape == x.shape and named[0][1].dtype == x.dtype
        await batch.close()

    asyncio.run(main())
    assert {(s[1:], d) for s, d in seen} == {((3,), "<f4"), ((5,), "<f4"), ((3,), "<f8")}
    assert batch_key([np.ones((2, 3)), np.ones((3, 3))]) is None  # inputs disagree on rows


def test_a_model_error_fails_only_its_own_request() -> None:
    def picky(arrays: list[np.ndarray]) -> Named:
        time.sleep(0.01)
        if (arrays[0] < 0).any():
            raise ValueError("negative values are not allowed")
        return [("output-0", arrays[0].sum(axis=1))]

    async def main() -> list[Any]:
        batch = batcher(picky)
        inputs = [np.full((2, 4), 1.0 if i != 3 else -1.0, np.float32) for i in range(8)]
        results = await asyncio.gather(*(batch.submit([x]) for x in inputs), return_exceptions=True)
        await batch.close()
        return results

    results = asyncio.run(main())
    assert isinstance(results[3], ValueError)
    for i, result in enumerate(results):
        if i != 3:
            np.testing.assert_array_equal(result[0][1], [4.0, 4.0])


def test_cancelled_request_does_not_stall_or_fail_its_batch() -> None:
    model, run = mlp_run()
    recorder = Recorder(run, delay=0.2)

    async def main() -> None:
        batch = batcher(recorder, max_batch_size=64, max_batch_time=0.05)
        blocker = asyncio.ensure_future(batch.submit([rows_of(1, 0)]))
        await asyncio.sleep(0.05)  # the device is busy: the next three join one batch
        inputs = [rows_of(2, i) for i in range(3)]
        tasks = [asyncio.ensure_future(batch.submit([x])) for x in inputs]
        await asyncio.sleep(0.3)  # their batch is running now
        tasks[1].cancel()
        done = await asyncio.wait_for(asyncio.gather(blocker, tasks[0], tasks[2]), timeout=5)
        for x, named in zip((inputs[0], inputs[2]), done[1:]):
            np.testing.assert_allclose(named[0][1], b.reference(model, x), rtol=1e-5, atol=1e-6)
        assert tasks[1].cancelled()
        after = await asyncio.wait_for(batch.submit([inputs[1]]), timeout=5)  # still serving
        np.testing.assert_allclose(after[0][1], b.reference(model, inputs[1]), rtol=1e-5, atol=1e-6)
        await batch.close()

    asyncio.run(main())
    assert recorder.batches[:2] == [1, 6]


def test_cancelled_while_queued_never_runs() -> None:
    _, run = mlp_run()
    recorder = Recorder(run, delay=0.2)

    async def main() -> None:
        batch = batcher(recorder, max_batch_size=64, max_batch_time=0.05)
        first = asyncio.ensure_future(batch.submit([rows_of(1, 0)]))
        await asyncio.sleep(0.05)
        queued = asyncio.ensure_future(batch.submit([rows_of(7, 1)]))
        await asyncio.sleep(0.01)
        queued.cancel()
        await first
        await asyncio.sleep(0.3)
        await batch.close()

    asyncio.run(main())
    assert recorder.batches == [1], "a cancelled request still ran"


def test_full_queue_answers_503_at_once() -> None:
    _, run = mlp_run()

    async def main() -> list[Any]:
        batch = batcher(Recorder(run, delay=0.2), max_batch_size=4, max_queue_rows=8)
        tasks = [asyncio.ensure_future(batch.submit([rows_of(2, i)])) for i in range(12)]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        with pytest.raises(RequestTooLarge, match="at most 8 rows"):
            await batch.submit([rows_of(9, 0)])
        await batch.close()
        return results

    results = asyncio.run(main())
    full = [r for r in results if isinstance(r, QueueFull)]
    assert full and all(r.status_code == 503 and "queue is full" in str(r) for r in full)
    assert len(results) - len(full) >= 4  # what fitted was served
    assert all(isinstance(r, list) for r in results if not isinstance(r, QueueFull))


def test_queue_timeout_fails_before_running() -> None:
    _, run = mlp_run()
    recorder = Recorder(run, delay=0.3)

    async def main() -> list[Any]:
        batch = batcher(recorder, max_batch_size=2, queue_timeout=0.1)
        tasks = [asyncio.ensure_future(batch.submit([rows_of(2, i)])) for i in range(4)]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await batch.close()
        return results

    results = asyncio.run(main())
    timed_out = [r for r in results if isinstance(r, QueueTimeout)]
    assert timed_out and all(r.status_code == 503 and "queue_timeout" in str(r) for r in timed_out)
    assert len(recorder.batches) == len(results) - len(timed_out), "a timed-out request still ran"


def test_unload_answers_every_queued_request_with_a_retryable_error() -> None:
    """The running batch still gets its answer; what waited behind it gets a 503 that says the model
    is being unloaded (retry), not a "queue is full" that would send the client to scale out."""
    model, run = mlp_run()

    async def main() -> list[Any]:
        batch = batcher(Recorder(run, delay=0.3), max_batch_size=4)
        running = asyncio.ensure_future(batch.submit([rows_of(1, 0)]))
        await asyncio.sleep(0.05)  # the first pass is on the device
        queued = [asyncio.ensure_future(batch.submit([rows_of(1, s)])) for s in range(1, 4)]
        await asyncio.sleep(0)
        await batch.close()
        return await asyncio.gather(running, *queued, return_exceptions=True)

    first, *rest = asyncio.run(main())
    np.testing.assert_allclose(first[0][1], b.reference(model, rows_of(1, 0)), rtol=1e-5, atol=1e-6)
    assert rest and all(isinstance(r, Unloading) and isinstance(r, Retryable) for r in rest), rest
    assert all(r.status_code == 503 and "being unloaded" in str(r) for r in rest)


class OOMAbove(torch.nn.Module):
    """Raises the real CUDA out-of-memory exception above `limit` rows, so the path runs on CPU."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.lin = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > self.limit:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {x.shape[0]} rows")
        return self.lin(x)


def test_out_of_memory_splits_the_batch_and_a_lone_giant_gets_413() -> None:
    torch.manual_seed(0)
    model = OOMAbove(limit=6).eval()
    recorder = Recorder(Predictor(model, torch.device("cpu"), None, Interface(None, None)).run, delay=0.02)

    async def main() -> None:
        batch = batcher(recorder, max_batch_size=32, max_batch_time=0.05)
        blocker = asyncio.ensure_future(batch.submit([rows_of(1, 99)]))
        await asyncio.sleep(0.01)
        inputs = [rows_of(2, i) for i in range(8)]  # 16 rows: over the limit together, fine in halves
        results = await asyncio.gather(*(batch.submit([x]) for x in inputs))
        await blocker
        for x, named in zip(inputs, results):
            np.testing.assert_allclose(named[0][1], b.reference(model, x), rtol=1e-5, atol=1e-6)
        with pytest.raises(RequestTooLarge, match="7 rows do not fit") as info:
            await batch.submit([rows_of(7, 0)])
        assert info.value.status_code == 413
        assert (await batch.submit([rows_of(3, 1)]))[0][1].shape == (3, 2)  # still serving
        await batch.close()

    asyncio.run(main())
    assert 16 in recorder.batches and max(r for r in recorder.batches if r <= 6) <= 6


class OOMHolding(torch.nn.Module):
    """Allocates a working tensor, then runs out of memory above `limit` rows; records whether the
    tensors of earlier failed passes were already freed when the next pass starts."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.lin = torch.nn.Linear(4, 2)
        self.failed: list[weakref.ref[torch.Tensor]] = []
        self.alive_at_retry: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.alive_at_retry.append(sum(ref() is not None for ref in self.failed))
        work = torch.ones(x.shape[0], 1024)  # what the failed pass held on the device
        if x.shape[0] > self.limit:
            self.failed.append(weakref.ref(work))
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (test)")
        return self.lin(x)


def test_out_of_memory_frees_the_failed_pass_before_the_retry() -> None:
    """The CPU twin of emptying the CUDA cache after an OOM: the retry with half the rows starts only
    once the failed pass's tensors are unreachable (its traceback frames held them before)."""
    model = OOMHolding(limit=4).eval()
    run = Predictor(model, torch.device("cpu"), None, Interface(None, None)).run

    async def main() -> None:
        batch = batcher(Recorder(run, delay=0.02), max_batch_size=32, max_batch_time=0.05)
        blocker = asyncio.ensure_future(batch.submit([rows_of(1, 99)]))
        await asyncio.sleep(0.01)
        await asyncio.gather(*(batch.submit([rows_of(2, i)]) for i in range(4)))  # 8 rows, then 2 x 4
        await blocker
        await batch.close()

    asyncio.run(main())
    assert model.failed, "no pass ran out of memory: the test did not exercise the retry"
    assert model.alive_at_retry[-1] == 0 and max(model.alive_at_retry) == 0, model.alive_at_retry


def test_preferred_batch_sizes_pad_and_padding_never_reaches_a_reply() -> None:
    model, run = mlp_run()
    recorder = Recorder(run)

    async def main() -> None:
        batch = batcher(recorder, max_batch_size=16, preferred_batch_sizes=(4, 8, 16))
        for n in (1, 3, 5, 9):
            x = rows_of(n, n)
            named = await batch.submit([x])
            assert named[0][1].shape == (n, 3)
            np.testing.assert_allclose(named[0][1], b.reference(model, x), rtol=1e-5, atol=1e-6)
        await batch.close()

    asyncio.run(main())
    assert recorder.batches == [4, 4, 8, 16]


def test_outputs_without_a_batch_dimension_are_answered_per_request() -> None:
    def total(arrays: list[np.ndarray]) -> Named:
        time.sleep(0.02)
        return [("output-0", np.asarray(arrays[0].sum()))]

    async def main() -> None:
        batch = batcher(total)
        inputs = [np.full((2, 4), float(i), np.float32) for i in range(5)]
        results = await asyncio.gather(*(batch.submit([x]) for x in inputs))
        for i, named in enumerate(results):
            assert float(named[0][1]) == 8.0 * i
        await batch.close()

    asyncio.run(main())


def test_mlserver_generic_batcher_never_wraps_the_runtime(tmp_path: Any) -> None:
    settings = ModelSettings(
        name="m",
        implementation=TorchFlowRuntime,
        max_batch_size=8,
        max_batch_time=0.5,
        parameters=ModelParameters(uri=str(tmp_path)),
    )
    model = TorchFlowRuntime(settings)
    predict = model.predict
    asyncio.run(load_batching(model))
    assert model.predict == predict
    assert settings.parameters is not None and settings.parameters.extra == {
        "max_batch_size": 8,
        "max_batch_time": 0.5,
    }


def test_expire_queued_answers_the_waiting_requests_and_spares_the_running_batch() -> None:
    """The drain's deadline: queued requests get a retryable error each, the running batch its results."""
    model, run = mlp_run()
    recorder = Recorder(run, delay=0.2)

    async def main() -> None:
        batch = batcher(recorder, max_batch_size=2)
        running = asyncio.create_task(batch.submit([rows_of(1, 0)]))
        await asyncio.sleep(0.05)  # the first pass is on the executor
        queued = [asyncio.create_task(batch.submit([rows_of(1, s)])) for s in range(1, 4)]
        await asyncio.sleep(0.01)
        batch.expire_queued(Unloading("shutting down; retry it."))
        results = await asyncio.gather(running, *queued, return_exceptions=True)
        await batch.close()
        first, *rest = results
        np.testing.assert_allclose(first[0][1], b.reference(model, rows_of(1, 0)), rtol=1e-5, atol=1e-6)
        assert all(isinstance(r, Unloading) and "retry" in str(r) for r in rest), rest
        assert len({id(r) for r in rest}) == 3  # one error each: the runtime tags each with its request id

    asyncio.run(main())
    assert recorder.batches == [1]


@pytest.mark.parametrize(
    ("delay", "config", "inline"),
    [
        (0.0, {}, True),  # a small CPU pass: on the event loop, once the cost fit knows it is short
        (0.0, {"execution_timeout": 5.0}, False),  # a hung pass there would stop the server
        (0.0, {"inline_pass_seconds": 0.0}, False),
        (0.005, {}, False),  # 5 ms: past inline_pass_seconds
    ],
)
def test_short_passes_on_our_own_cores_skip_the_thread_hand_off(
    delay: float, config: dict[str, Any], inline: bool
) -> None:
    model, run = mlp_run()
    threads: list[int] = []

    def spin(arrays: list[np.ndarray]) -> Named:
        threads.append(threading.get_ident())
        end = time.perf_counter() + delay
        while time.perf_counter() < end:  # busy on this core, as a CPU model is
            pass
        return run(arrays)

    async def main() -> None:
        batch = batcher(spin, **{"inline_pass_seconds": 0.001, "compute_on": "auto", **config})
        for seed in range(8):
            x = rows_of(1, seed)
            named = await batch.submit([x])
            np.testing.assert_allclose(named[0][1], b.reference(model, x), rtol=1e-5, atol=1e-6)
        await batch.close()

    loop_thread = threading.get_ident()
    asyncio.run(main())
    assert threads[0] != loop_thread  # the first pass: nothing known yet
    assert (threads[-1] == loop_thread) is inline
