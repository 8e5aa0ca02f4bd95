"""Issue 6's settings behind a real `mlserver start`: two model copies (`devices: ["cpu", "cpu"]`), each
compiled (dynamo, `eager` backend: the inductor run is in tests/gpu) and computing in bfloat16 under
autocast, with MLServer's batching keys, and parallel workers 0 and 1. On a GPU node the same settings
name CUDA devices; that has not been run here (no GPU)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from tests.conftest import Saved
from tests.integration.clients import metric, run_clients
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
    with Server(repo, parallel_workers=request.param).running(["two"]) as srv:
        yield srv


def test_both_copies_serve_compiled_without_recompiling(server: Server, mlp: dict[str, Saved]) -> None:
    def check(worker: int, x: np.ndarray, got: np.ndarray) -> str | None:
        if got.dtype != np.float32 or not np.allclose(got, mlp["pt2"].expected(x), rtol=2e-2, atol=2e-2):
            return f"wrong answer ({got.dtype}) for {x.shape[0]} rows"
        return None

    errors, _ = run_clients(server, "two", workers=16, requests=8, max_rows=8, check=check)
    assert not errors, errors[:5]
    text = server.metrics()
    for label in ("cpu#0", "cpu#1"):
        assert metric(text, "torchflow_batch_rows_count", model="two", device=label) > 0, f"{label} idle"
        assert metric(text, "torchflow_compile_recompiles_total", model="two", device=label) == 0
        assert metric(text, "torchflow_device_memory_bytes", model="two", device=label) > 0
    assert metric(text, "torchflow_batch_rows_bucket", model="two", le="2.0") == 0  # padded to 4 or 8
    status, meta = server.get("/v2/models/two")
    assert status == 200, meta
    params = meta["parameters"]
    assert params["torchflow.device"] == "cpu, cpu"
    assert params["torchflow.precision"] == "autocast"
    assert params["torchflow.compile"].endswith("warmed rows 4,8")
