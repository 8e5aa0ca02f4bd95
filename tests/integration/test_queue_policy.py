"""Triton's queue policy behind a real `mlserver start`, driven by tritonclient's own `priority` and
`timeout` arguments over REST and gRPC: higher levels first, a timed-out request gets a 503 unrun, a
full level refuses, bad values are 400s; the model config, metrics and metadata say what applies."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests import builders as b
from tests.integration.clients import metric
from tests.server import Server, write_model_settings

DELAY = 0.4  # seconds per pass: requests sent meanwhile queue


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, b.SlowMLP]]:
    root: Path = tmp_path_factory.mktemp("queue-policy")
    model = b.SlowMLP(delay=DELAY).eval()
    b.save(model, root / "saved", "pickle", b.example_for(b.MLP))
    write_model_settings(
        root / "repo" / "slow",
        "slow",
        root / "saved",
        mlserver={"max_batch_size": 2, "max_batch_time": 0.001},
        priority_levels=2,
        priority_queue_policy={"1": {"max_queue_size": 2}},
    )
    with Server(root / "repo").running(["slow"]) as server:
        yield server, model


def _client(server: Server, grpc: bool) -> Any:
    """A connected client: its channel is up before the test's timing starts."""
    client = (grpcclient if grpc else httpclient).InferenceServerClient(server.grpc if grpc else server.http)
    assert client.is_server_live()
    return client


def _infer(server: Server, grpc: bool, seed: int, client: Any = None, **kwargs: Any) -> np.ndarray:
    module: Any = grpcclient if grpc else httpclient
    client = client or _client(server, grpc)
    x = np.random.default_rng(seed).random((1, 4), dtype=np.float32)
    tensor = module.InferInput("input-0", [1, 4], "FP32")
    tensor.set_data_from_numpy(x)
    return np.asarray(client.infer("slow", [tensor], **kwargs).as_numpy("output-0"))


def _busy(server: Server) -> threading.Thread:
    """A request that keeps the device busy for one pass; the caller joins it."""
    thread = threading.Thread(target=_infer, args=(server, False, 999))
    thread.start()
    time.sleep(0.1)
    return thread


@pytest.mark.parametrize("grpc", [False, True], ids=["rest", "grpc"])
def test_a_request_past_its_timeout_gets_a_503_unrun(served: tuple[Server, b.SlowMLP], grpc: bool) -> None:
    server, _ = served
    busy = _busy(server)
    started = time.monotonic()
    with pytest.raises(InferenceServerException) as err:
        _infer(server, grpc, 1, timeout=50_000)  # 50 ms, in tritonclient's microseconds
    took = time.monotonic() - started
    busy.join()
    text = f"{err.value.status()} {err.value.message()}"
    assert ("UNAVAILABLE" if grpc else "503") in text, text
    assert "timeout parameter" in text and "not run" in text, text
    assert took < DELAY, f"the 503 came after {took:.2f}s: it waited for the pass, not its timeout"


@pytest.mark.parametrize("grpc", [False, True], ids=["rest", "grpc"])
def test_the_higher_level_is_served_first(served: tuple[Server, b.SlowMLP], grpc: bool) -> None:
    server, model = served
    finished: dict[str, float] = {}
    wrong: list[str] = []

    go = {2: threading.Event(), 1: threading.Event()}
    connected = threading.Barrier(5)

    def one(tag: str, priority: int, seed: int) -> None:
        client = _client(server, grpc)  # tritonclient's HTTP client stays on the thread that made it
        connected.wait()
        go[priority].wait()
        got = _infer(server, grpc, seed, client, priority=priority)
        x = np.random.default_rng(seed).random((1, 4), dtype=np.float32)
        if not np.allclose(got, b.reference(model, x), rtol=1e-5, atol=1e-5):
            wrong.append(tag)
        finished[tag] = time.monotonic()

    tags = [("low0", 2), ("low1", 2), ("high0", 1), ("high1", 1)]
    threads = [threading.Thread(target=one, args=(tag, p, 10 + i)) for i, (tag, p) in enumerate(tags)]
    for t in threads:
        t.start()
    connected.wait()
    busy = _busy(server)
    go[2].set()
    time.sleep(0.1)  # the low ones are queued first
    go[1].set()
    for t in (busy, *threads):
        t.join()
    assert not wrong, wrong
    assert max(finished["high0"], finished["high1"]) < min(finished["low0"], finished["low1"]), finished


def test_a_full_level_refuses_and_the_metrics_count_it(served: tuple[Server, b.SlowMLP]) -> None:
    server, _ = served
    outcomes: list[str] = []

    def one(seed: int) -> None:
        try:
            _infer(server, False, seed, priority=1)
            outcomes.append("ok")
        except InferenceServerException as err:
            outcomes.append(f"{err.status()} {err.message()}")

    busy = _busy(server)
    threads = [threading.Thread(target=one, args=(30 + i,)) for i in range(4)]
    for t in threads:
        t.start()
        time.sleep(0.02)
    for t in (busy, *threads):
        t.join()
    refused = [o for o in outcomes if o != "ok"]
    assert outcomes.count("ok") == 2 and len(refused) == 2, outcomes
    assert all("503" in o and "priority level 1 is full" in o for o in refused), refused
    text = server.metrics()
    assert metric(text, "torchflow_queue_rejected_total", model="slow", priority="1", reason="full") >= 2


def test_bad_scheduling_parameters_are_400s(served: tuple[Server, b.SlowMLP]) -> None:
    server, _ = served
    body = {
        "inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP32", "data": [0.1, 0.2, 0.3, 0.4]}],
        "parameters": {"priority": "urgent"},
    }
    status, answer = server.post("/v2/models/slow/infer", body)
    assert status == 400 and "'priority' must be a non-negative integer" in answer["error"], answer


def test_config_and_metadata_say_what_applies(served: tuple[Server, b.SlowMLP]) -> None:
    server, _ = served
    config = httpclient.InferenceServerClient(server.http).get_model_config("slow")
    batching = config["dynamic_batching"]
    assert batching["priority_levels"] == 2 and batching["default_priority_level"] == 2
    assert batching["priority_queue_policy"]["1"]["max_queue_size"] == 2
    grpc_config = grpcclient.InferenceServerClient(server.grpc).get_model_config("slow").config
    assert grpc_config.dynamic_batching.priority_queue_policy[1].max_queue_size == 2
    status, metadata = server.get("/v2/models/slow")
    assert status == 200
    dispatch = metadata["parameters"]["torchflow.dispatch"]
    # the model sleeps with the GIL released: its passes compute off the server's cores
    assert dispatch.startswith("computes on the device (measured"), dispatch
    assert "ms + " in dispatch, dispatch  # the cost fit, in ms per pass and per row
