"""Issue 6's settings behind a real `mlserver start`: two model copies (`devices: ["cpu", "cpu"]`), each
compiled (dynamo, `eager` backend: the inductor run is in tests/gpu) and computing in bfloat16 under
autocast, with MLServer's batching keys, and parallel workers 0 and 1. On a GPU node the same settings
name CUDA devices; that has not been run here (no GPU)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.conftest import Saved
from tests.integration.test_batching_server import _metric
from tests.server import Server, write_model_settings

SETTINGS = {
    "devices": ["cpu", "cpu"],
    "compile": True,
    "compile_backend": "eager",
    "precision": "autocast",
    "dtype": "bfloat16",
    "preferred_batch_sizes": [4, 8],
}


@pytest.fixture(scope="module", params=[0, 1], ids=["workers0", "workers1"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, mlp: dict[str, Saved]
) -> Iterator[Server]:
    repo = tmp_path_factory.mktemp(f"devices-{request.param}")
    write_model_settings(
        repo / "two",
        "two",
        mlp["pt2"].path,
        mlserver={"max_batch_size": 8, "max_batch_time": 0.005},
        **SETTINGS,
    )
    srv = Server(repo, parallel_workers=request.param).start()
    try:
        srv.wait_ready(["two"])
        yield srv
    finally:
        srv.stop()


def test_both_copies_serve_compiled_without_recompiling(server: Server, mlp: dict[str, Saved]) -> None:
    errors: list[str] = []

    def client(worker: int) -> None:
        try:
            grpc_side = worker % 2 == 1
            module = grpcclient if grpc_side else httpclient
            conn = module.InferenceServerClient(server.grpc if grpc_side else server.http)
            rng = np.random.default_rng(worker)
            for _ in range(8):
                x = rng.random((int(rng.integers(1, 8)), 4), dtype=np.float32)
                tensor = module.InferInput("input-0", list(x.shape), "FP32")
                if grpc_side:
                    tensor.set_data_from_numpy(x)
                else:
                    tensor.set_data_from_numpy(x, binary_data=False)
                got = conn.infer("two", [tensor]).as_numpy("output-0")
                if got.dtype != np.float32 or not np.allclose(
                    got, mlp["pt2"].expected(x), rtol=2e-2, atol=2e-2
                ):
                    errors.append(f"worker {worker}: wrong answer ({got.dtype}) for {x.shape[0]} rows")
        except BaseException as err:  # a thread's death must fail the test, not vanish
            errors.append(f"worker {worker} died: {type(err).__name__}: {err}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:5]
    text = server.metrics()
    for label in ("cpu#0", "cpu#1"):
        assert _metric(text, "torchflow_batch_rows_count", model="two", device=label) > 0, f"{label} idle"
        assert _metric(text, "torchflow_compile_recompiles_total", model="two", device=label) == 0
        assert _metric(text, "torchflow_device_memory_bytes", model="two", device=label) > 0
    assert _metric(text, "torchflow_batch_rows_bucket", model="two", le="2.0") == 0  # padded to 4 or 8
    status, meta = server.get("/v2/models/two")
    assert status == 200, meta
    params = meta["parameters"]
    assert params["torchflow.device"] == "cpu, cpu"
    assert params["torchflow.precision"] == "autocast"
    assert params["torchflow.compile"].endswith("warmed rows 4,8")
