"""A model that fails to load at startup fails `mlserver start`; one that fails later through the
repository API does not.

MLServer 1.7.1 alone exits with code 0 after a startup failure, and answers `/v2/health/ready` 200
between unregistering the failed model and stopping its REST server (mlserver_torchflow/patches/startup.py).
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests import builders as b
from tests.conftest import Saved
from tests.server import Server, write_model_settings

# mlserver_torchflow.patches.startup.EXIT_CODE: not imported, as importing MLServer here clashes with
# tritonclient's protobufs (the tiers run in separate processes).
EXIT_CODE = 3


@pytest.fixture(scope="module")
def breaks_when_loaded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Restoring it takes 2 s, then raises: the REST server is up and polled when the load fails."""
    model = b.build(b.BreaksWhenLoaded)
    return b.save(model, tmp_path_factory.mktemp("breaks") / "m", "pickle", b.example_for(b.BreaksWhenLoaded))


def _poll_ready(srv: Server, seen: list[int], stop: threading.Event) -> None:
    while not stop.is_set():
        seen.append(srv.get("/v2/health/ready")[0])
        time.sleep(0.01)


@pytest.mark.parametrize("workers", [0, 1], ids=["workers0", "workers1"])
def test_a_startup_failure_exits_non_zero_and_never_looks_ready(
    tmp_path: Path, breaks_when_loaded: Path, mlp: dict[str, Saved], workers: int
) -> None:
    write_model_settings(tmp_path / "good", "good", mlp["pt2"].path)
    write_model_settings(tmp_path / "broken", "broken", breaks_when_loaded)
    srv = Server(tmp_path, parallel_workers=workers).start()
    assert srv.proc is not None
    seen: list[int] = []
    stop = threading.Event()
    poller = threading.Thread(target=_poll_ready, args=(srv, seen, stop))
    poller.start()
    try:
        code = srv.proc.wait(timeout=120)
    finally:
        stop.set()
        poller.join()
        srv.stop()
    log = srv.log()
    assert code == EXIT_CODE, f"exit code {code}:\n{log[-3000:]}"
    assert 200 not in seen, f"/v2/health/ready answered 200 during a failed startup: {seen}"
    assert any(s not in (0, 200) for s in seen), "the REST server never answered: the poll proved nothing"

    assert f"The server stops and exits with code {EXIT_CODE}." in log
    if workers:  # the worker's own tracebacks repeat the reason (MLServer's, not ours to trim)
        return
    reason = "RuntimeError: BreaksWhenLoaded cannot be restored (on purpose)"
    assert log.count(reason) == 1, log[-3000:]
    (line,) = [line for line in log.splitlines() if reason in line]
    assert "[mlserver.torchflow][broken] ERROR - model broken failed to load at startup: cannot load " in line
    assert "model.pth as pickle onto cpu" in line, line
    assert (
        f"failed to load during startup! (the reason is logged above by mlserver.torchflow) The server "
        f"stops and exits with code {EXIT_CODE}." in log
    )


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, mlp: dict[str, Saved]) -> Iterator[Server]:
    repo = tmp_path_factory.mktemp("repository-api")
    write_model_settings(repo / "mlp", "mlp", mlp["pt2"].path)
    with Server(repo).running(["mlp"]) as srv:
        yield srv


def test_a_failed_load_through_the_repository_api_keeps_the_server(
    running: Server, tmp_path: Path, mlp: dict[str, Saved]
) -> None:
    broken = tmp_path / "broken-model"
    shutil.copytree(mlp["pt2"].path, broken)
    (broken / "data" / "model.pt2").write_bytes(b"")
    write_model_settings(running.dir / "late", "late", broken)
    status, reply = running.post("/v2/repository/models/late/load", {})
    assert status >= 400 and "(0 bytes) is empty" in str(reply), (status, reply)

    time.sleep(1.0)
    assert running.proc is not None and running.proc.poll() is None, "the server exited"
    assert running.get("/v2/health/ready")[0] == 200
    x = np.ones((1, 4), np.float32)
    body = {"inputs": [{"name": "input-0", "datatype": "FP32", "shape": [1, 4], "data": x.ravel().tolist()}]}
    assert running.post("/v2/models/mlp/infer", body)[0] == 200
    log = running.log()
    assert "model late failed to load: the weights file" in log and "at startup" not in log
    assert "exits with code" not in log

    # The same model, fixed, loads through the API and serves.
    shutil.copy(mlp["pt2"].path / "data" / "model.pt2", broken / "data" / "model.pt2")
    assert running.post("/v2/repository/models/late/load", {})[0] == 200
    assert running.post("/v2/models/late/infer", body)[0] == 200
