"""The runtime's batcher behind a real `mlserver start`, with parallel workers 0 and 1.

`max_batch_size` / `max_batch_time` are set where MLServer users set them (model-settings.json's
top level); the runtime takes them over so MLServer's generic batcher never wraps it. The model is the
MLP behind a device that takes 10 ms a pass: requests sent while a pass runs queue behind it, so merging
follows from the load and not from how fast the test's clients happen to be (with a 0.2 ms pass and an
idle device, a lone request is rightly run at once and a slow client machine may never overlap two).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest
import torch
import tritonclient.http as httpclient

from tests import builders as b
from tests.conftest import Saved
from tests.integration.clients import metric, run_clients
from tests.server import Server, write_model_settings

BATCHING = {"max_batch_size": 16, "max_batch_time": 0.02}


@pytest.fixture(scope="module")
def busy(tmp_path_factory: pytest.TempPathFactory) -> Saved:
    """The MLP on a busy device (10 ms a pass), saved by mlflow as pickle."""
    torch.manual_seed(0)
    model, example = b.SlowMLP(delay=0.01).eval(), b.example_for(b.MLP)
    path = b.save(model, tmp_path_factory.mktemp("busy") / "mlp", "pickle", example)
    return Saved(path, model, example)


@pytest.fixture(scope="module", params=[0, 1], ids=["workers0", "workers1"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, busy: Saved
) -> Iterator[Server]:
    repo = tmp_path_factory.mktemp(f"batching-{request.param}")
    write_model_settings(repo / "mlp", "mlp", busy.path, mlserver=BATCHING, preferred_batch_sizes=[4, 8, 16])
    with Server(repo, parallel_workers=request.param).running(["mlp"]) as srv:
        yield srv


def test_concurrent_clients_each_get_their_own_answer(server: Server, busy: Saved) -> None:
    def check(worker: int, x: np.ndarray, got: np.ndarray) -> str | None:
        if got.shape != (x.shape[0], 3) or not np.allclose(got, busy.expected(x), rtol=1e-5, atol=1e-5):
            return f"wrong answer for {x.shape[0]} rows"
        return None

    errors, done = run_clients(server, "mlp", workers=24, requests=10, max_rows=6, check=check)
    assert not errors, errors[:5]
    assert len(done) == 240, sorted(set(range(24)) - set(done))
    text = server.metrics()
    batches = metric(text, "torchflow_batch_rows_count", model="mlp")
    requests = metric(text, "torchflow_queue_wait_seconds_count", model="mlp")
    assert requests >= 240
    assert 0 < batches < requests, "requests were never merged into one forward pass"
    # preferred sizes: every executed batch was padded to 4, 8 or 16 rows
    assert metric(text, "torchflow_batch_rows_bucket", model="mlp", le="2.0") == 0
    assert metric(text, "torchflow_batch_rows_bucket", model="mlp", le="16.0") == batches
    assert metric(text, "torchflow_compute_seconds_sum", model="mlp") > 0
    assert metric(text, "torchflow_device_memory_bytes", model="mlp", device="cpu") > 10_000_000
    assert metric(text, "torchflow_queue_rows", model="mlp") == 0


def test_invalid_request_among_valid_ones(server: Server, busy: Saved) -> None:
    results: dict[int, tuple[int, object]] = {}
    x = np.random.default_rng(1).random((2, 4), dtype=np.float32)
    good = {"inputs": [{"name": "input-0", "datatype": "FP32", "shape": [2, 4], "data": x.ravel().tolist()}]}
    bad = {"inputs": [{"name": "input-0", "datatype": "FP32", "shape": [2, 4], "data": [1, 2, 3]}]}

    def send(i: int) -> None:
        results[i] = server.post("/v2/models/mlp/infer", bad if i == 5 else good)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results[5][0] == 400 and "input-0" in results[5][1]["error"]  # type: ignore[index]
    for i, (status, reply) in results.items():
        if i != 5:
            assert status == 200, reply
            got = np.asarray(reply["outputs"][0]["data"], np.float32).reshape(2, 3)  # type: ignore[index]
            np.testing.assert_allclose(got, busy.expected(x), rtol=1e-5, atol=1e-5)


def test_triton_config_for_perf_analyzer(server: Server) -> None:
    status, config = server.get("/v2/models/mlp/config")
    assert status == 200, config
    assert config["max_batch_size"] == 16
    assert config["input"] == [{"name": "input-0", "data_type": "TYPE_FP32", "dims": [4]}]
    assert config["output"] == [{"name": "output-0", "data_type": "TYPE_FP32", "dims": [3]}]
    assert config["dynamic_batching"]["preferred_batch_size"] == [4, 8, 16]
    parsed = httpclient.InferenceServerClient(server.http).get_model_config("mlp")
    assert parsed["input"][0]["name"] == "input-0"
