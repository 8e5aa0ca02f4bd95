"""A model whose forward pass hangs (a stuck device, as a CPU twin) behind a real `mlserver start` with
`execution_timeout`: the hung request gets a retryable 503 at the timeout, the copy reports not ready and
refuses new work at once instead of queueing it behind the hang, and it serves again once the pass returns."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np

from tests import builders as b
from tests.server import Server, write_model_settings


def _body(x: np.ndarray) -> dict:
    return {
        "inputs": [
            {"name": "input-0", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
        ]
    }


def test_a_hung_pass_is_a_503_and_readiness_says_so_until_it_returns(tmp_path: Path) -> None:
    model = b.HangsOnBig(hang=5.0).eval()
    b.save(model, tmp_path / "saved", "pickle", b.example_for(b.MLP))
    write_model_settings(
        tmp_path / "repo" / "m",
        "m",
        tmp_path / "saved",
        mlserver={"max_batch_size": 8, "max_batch_time": 0.002},
        execution_timeout=1.0,
    )
    good = np.full((1, 4), 0.5, dtype=np.float32)
    with Server(tmp_path / "repo").running(["m"]) as server:
        assert server.post("/v2/models/m/infer", _body(good))[0] == 200
        hung: dict[str, object] = {}

        def send_hanging() -> None:
            started = time.monotonic()
            hung["answer"] = server.post(
                "/v2/models/m/infer", _body(np.full((1, 4), 1000.0, dtype=np.float32))
            )
            hung["took"] = time.monotonic() - started

        thread = threading.Thread(target=send_hanging)
        thread.start()
        thread.join(10)
        status, answer = hung["answer"]  # type: ignore[misc]
        assert status == 503 and "execution_timeout" in answer["error"], answer
        assert 0.9 < float(hung["took"]) < 3.0, hung["took"]  # type: ignore[arg-type]
        # While the pass is stuck: not ready, and new work is refused at once, not queued behind it.
        assert server.get("/v2/models/m/ready") == (400, {"name": "m", "ready": False})
        assert server.get("/v2/health/ready")[0] == 400
        started = time.monotonic()
        status, answer = server.post("/v2/models/m/infer", _body(good))
        assert status == 503 and "has not returned" in answer["error"], answer
        assert time.monotonic() - started < 1.0
        # Once the pass returns, the copy serves again.
        deadline = time.monotonic() + 15
        while server.get("/v2/models/m/ready")[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        status, answer = server.post("/v2/models/m/infer", _body(good))
        assert status == 200, answer
        got = np.asarray(answer["outputs"][0]["data"], dtype=np.float32).reshape(1, 3)
        np.testing.assert_allclose(got, b.reference(model, good), rtol=1e-5, atol=1e-5)
        log = server.log()
    assert "past execution_timeout" in log and "healthy again" in log, log[-3000:]
    assert "was never retrieved" not in log, log[-3000:]
    assert json.dumps(answer)  # the last answer is plain JSON
