"""Batches in flight on one copy: two staging slots, launched on the executor thread and finished on
the collector thread, so the next batch is staged while one computes (engine/transfers.py).

On CPU the same bookkeeping runs unpinned and without streams (`stage=True`): each pass has computed
by the time `launch` returns, but its outputs wait in its slot until `finish`, as on a GPU, so a slot
reused too early shows up as another batch's values. The CUDA case also runs the streams.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import torch

from mlserver_torchflow.common import Named
from mlserver_torchflow.config import BatchConfig
from mlserver_torchflow.engine.batching import Batcher
from mlserver_torchflow.engine.inference import Launched, Predictor
from mlserver_torchflow.engine.transfers import Transfers
from mlserver_torchflow.protocol.signature import Interface
from mlserver_torchflow.serving.metrics import BatchMetrics
from tests import builders as b

ON_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
DEVICES = ["cpu", pytest.param("cuda", marks=ON_CUDA)]


def staged_predictor(model: torch.nn.Module, device: str, **kwargs: Any) -> Predictor:
    predictor = Predictor(model.to(device), torch.device(device), None, Interface(None, None), **kwargs)
    predictor.transfers = Transfers(
        torch.device(device),
        pin=device == "cuda",
        stage=True,
        channels_last=kwargs.get("channels_last", False),
    )
    return predictor


def pipelined(predictor: Predictor, name: str, **config: Any) -> tuple[Batcher, ThreadPoolExecutor]:
    """A batcher whose passes are launched on one thread and finished on another (its collector)."""
    collector = ThreadPoolExecutor(max_workers=1)
    cfg = BatchConfig(max_batch_size=4, max_batch_time=0.001, **config)
    metrics = BatchMetrics(name, "cpu")
    return Batcher(
        predictor.run, ThreadPoolExecutor(max_workers=1), cfg, metrics, "cpu", (predictor, collector)
    ), collector


def rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 4), dtype=np.float32)


@pytest.mark.parametrize("device", DEVICES)
def test_a_third_batch_waits_for_a_free_slot_and_no_batch_sees_another_ones_values(device: str) -> None:
    model = b.build(b.MLP)
    predictor = staged_predictor(model, device)
    inputs = [rows(3, seed) for seed in range(3)]
    first = predictor.launch([[inputs[0]]], 3)
    second = predictor.launch([[inputs[1]]], 3)
    third: list[Launched] = []
    launcher = threading.Thread(target=lambda: third.append(predictor.launch([[inputs[2]]], 3)))
    launcher.start()
    launcher.join(0.3)
    assert launcher.is_alive() and not third, "a third batch was staged while both slots were in use"
    answers = [predictor.finish(first)]
    launcher.join(5)
    assert third, "the third batch did not get the slot the first one freed"
    answers += [predictor.finish(second), predictor.finish(third[0])]
    for x, named in zip(inputs, answers, strict=True):
        np.testing.assert_allclose(named[0][1], b.reference(model.cpu(), x), rtol=1e-4, atol=1e-5)


def test_batches_launch_while_the_one_before_is_still_being_finished() -> None:
    """Through the batcher: with a slow finish on the collector thread, the executor thread launches
    the next batch before the previous one is answered, and every request gets its own rows."""
    model = b.build(b.MLP)
    predictor = staged_predictor(model, "cpu")
    events: list[tuple[str, float]] = []
    lock = threading.Lock()
    launch, finish = predictor.launch, predictor.finish

    def timed_launch(parts: list[list[np.ndarray]], count: int | None) -> Launched:
        with lock:
            events.append(("launch", time.monotonic()))
        return launch(parts, count)

    def slow_finish(launched: Launched) -> Named:
        time.sleep(0.15)  # a device still computing
        with lock:
            events.append(("finish", time.monotonic()))
        return finish(launched)

    predictor.launch, predictor.finish = timed_launch, slow_finish  # type: ignore[method-assign]

    async def main() -> list[Named]:
        batcher, collector = pipelined(predictor, "t-pipeline", compute_on="device")
        inputs = [rows(1 + i % 3, i) for i in range(12)]
        answers = await asyncio.gather(*(batcher.submit([x]) for x in inputs))
        await batcher.close()
        collector.shutdown(wait=True)
        for x, named in zip(inputs, answers, strict=True):
            np.testing.assert_allclose(named[0][1], b.reference(model, x), rtol=1e-4, atol=1e-5)
        return answers

    asyncio.run(main())
    kinds = [kind for kind, _ in events]
    assert kinds.count("launch") >= 3
    first_finish = kinds.index("finish")
    assert kinds[:first_finish].count("launch") >= 2, f"no batch was launched while one finished: {kinds}"


@pytest.mark.parametrize("device", DEVICES)
def test_channels_last_gives_the_same_answers_and_the_forward_sees_nhwc(device: str) -> None:
    from mlserver_torchflow.engine.replica import _channels_last

    model = b.build(b.ConvNet)
    seen: list[bool] = []
    conv = model.conv
    real = conv.forward
    conv.forward = lambda x: seen.append(x.is_contiguous(memory_format=torch.channels_last)) or real(x)  # type: ignore[method-assign]
    image = np.random.default_rng(5).random((3, 3, 8, 8), dtype=np.float32)
    plain = b.reference(b.build(b.ConvNet), image)
    converted = _channels_last(model.to(device))
    assert converted.conv.weight.is_contiguous(memory_format=torch.channels_last)
    predictor = staged_predictor(converted, device, channels_last=True)
    got = predictor.run([image])[0][1]
    assert seen == [True]
    np.testing.assert_allclose(got, plain, rtol=1e-4, atol=1e-5)
    # Without staging (the CPU path) the setting converts the input as well.
    seen.clear()
    plain_path = Predictor(
        converted.cpu(), torch.device("cpu"), None, Interface(None, None), channels_last=True
    )
    np.testing.assert_allclose(plain_path.run([image])[0][1], plain, rtol=1e-4, atol=1e-5)
    assert seen == [True]


def test_a_pipelined_pass_past_execution_timeout_is_answered_and_its_slot_comes_back() -> None:
    """A finish that hangs (a device stuck in a kernel): its requests get the retryable timeout, the copy
    is unhealthy until the finish returns, and then the slot it held serves the next batches."""
    from mlserver_torchflow.errors import ExecutionTimeout

    model = b.build(b.MLP)
    predictor = staged_predictor(model, "cpu")
    finish = predictor.finish
    stuck = threading.Event()

    def hanging_finish(launched: Launched) -> Named:
        if not stuck.is_set():
            stuck.set()
            time.sleep(0.6)
        return finish(launched)

    predictor.finish = hanging_finish  # type: ignore[method-assign]

    async def main() -> None:
        batcher, collector = pipelined(predictor, "t-pipeline-hang", execution_timeout=0.2)
        with pytest.raises(ExecutionTimeout, match="execution_timeout"):
            await batcher.submit([rows(2, 0)])
        assert batcher.healthy is False
        deadline = time.monotonic() + 5
        while not batcher.healthy and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert batcher.healthy, "the copy stayed unhealthy after the hung pass returned"
        inputs = [rows(1 + i % 3, 10 + i) for i in range(8)]  # more batches than slots
        answers = await asyncio.gather(*(batcher.submit([x]) for x in inputs))
        for x, named in zip(inputs, answers, strict=True):
            np.testing.assert_allclose(named[0][1], b.reference(model, x), rtol=1e-4, atol=1e-5)
        await batcher.close()
        collector.shutdown(wait=True)

    asyncio.run(main())
    assert len(predictor.transfers._free) == 2


@pytest.mark.parametrize("device", DEVICES)
def test_cuda_graph_copies_copy_out_in_the_compute_streams_order(device: str) -> None:
    """A CUDA-graph replay writes its outputs where the previous replay did: the copy out of batch n
    must be queued before the replay of batch n+1, on the same stream. Other modes copy out on a
    stream of their own."""
    graphs = Predictor(
        b.build(b.MLP).to(device), torch.device(device), None, Interface(None, None), cuda_graphs=True
    )
    plain = Predictor(b.build(b.MLP).to(device), torch.device(device), None, Interface(None, None))
    assert graphs.transfers.serial_out and not plain.transfers.serial_out
    if device == "cuda":
        lanes, own = graphs.transfers.lanes._streams, plain.transfers.lanes._streams
        assert lanes["out"] is lanes["compute"] and own["out"] is not own["compute"]


def test_cuda_graph_recordings_after_ready_are_counted_once_per_new_shape() -> None:
    """What the recompile counter cannot see: inductor records a CUDA graph for each new set of input
    shapes. The replica turns this on only on CUDA (on CPU the CUDA-graph modes record nothing); the
    counting itself runs here on a CPU predictor."""
    recorded: list[int] = []
    predictor = Predictor(
        b.build(b.MLP),
        torch.device("cpu"),
        None,
        Interface(None, None),
        cuda_graphs=True,
        on_recording=lambda: recorded.append(1),
    )
    for n in (1, 2, 4):  # the warm-up's sizes: recorded before ready, not counted
        predictor.run([rows(n, n)])
    predictor.ready = True
    predictor.finish(predictor.launch([[rows(1, 0)], [rows(3, 1)]], 4))  # 4 rows, padded: warmed
    assert recorded == []
    predictor.finish(predictor.launch([[rows(3, 2)], [rows(2, 3)]], 5))  # 5 rows: a new recording
    predictor.run([rows(5, 4)])  # the same shapes again
    predictor.run([rows(7, 5)])
    assert len(recorded) == 2
