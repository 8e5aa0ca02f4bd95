"""Faults at predict time behind a real `mlserver start`, with the runtime's batcher on.

The model raises ValueError on any negative value (tests/builders.py `FailsOnNegative`, 20 ms a pass so
that concurrent requests queue up and are merged). A failing request must get its own one-line 500,
its batch neighbours their answers, and the server must keep serving; every failed request is one
log line with its id, the model, the status and the reason.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests import builders as b
from tests.server import Server, write_model_settings

MODEL = "neg"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Any]]:
    model = b.build(b.FailsOnNegative)
    saved = b.save(model, tmp_path_factory.mktemp("neg") / "m", "pickle", b.example_for(b.FailsOnNegative))
    repo = tmp_path_factory.mktemp("faults-predict")
    write_model_settings(repo / MODEL, MODEL, saved, mlserver={"max_batch_size": 8, "max_batch_time": 0.05})
    with Server(repo).running([MODEL]) as srv:
        yield srv, model


def _body(x: np.ndarray, rid: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "inputs": [
            {"name": "input-0", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}
        ]
    }
    if rid is not None:
        body["id"] = rid
    return body


def _lines_for(log: str, rid: str) -> list[str]:
    return [line for line in log.splitlines() if f"request {rid} to model {MODEL} failed" in line]


def test_a_failing_request_fails_alone_and_its_neighbours_succeed(server: tuple[Server, Any]) -> None:
    srv, model = server
    rng = np.random.default_rng(7)
    n = 32
    bad = {i for i in range(n) if i % 4 == 1}  # one in four, spread over every batch
    xs = {i: rng.random((1, 4), dtype=np.float32) * (-1 if i in bad else 1) for i in range(n)}
    results: dict[int, tuple[int, Any]] = {}
    gate = threading.Barrier(n)

    def call(i: int) -> None:
        gate.wait()
        results[i] = srv.post(f"/v2/models/{MODEL}/infer", _body(xs[i], f"fault-{i}"))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == n, "a client never got an answer"

    for i, (status, reply) in results.items():
        if i in bad:
            assert status == 500, (i, status, reply)
            error = reply["error"]
            assert error == (
                f"model '{MODEL}' failed on this request: ValueError: this model accepts no negative "
                f"values (request id fault-{i})"
            ), error
        else:
            assert status == 200, (i, status, reply)
            (out,) = reply["outputs"]
            got = np.asarray(out["data"], np.float32).reshape(out["shape"])
            np.testing.assert_allclose(got, b.reference(model, xs[i]), rtol=1e-5, atol=1e-6)
            assert reply["id"] == f"fault-{i}"

    passes = [int(r) for r in re.findall(r"FailsOnNegative: a pass of (\d+) rows raised", srv.log())]
    assert max(passes) > 1, f"no failing pass held other requests' rows: {passes}"

    # The server keeps serving, and logged one ERROR line (with the traceback) per failed request.
    x = np.ones((2, 4), np.float32)
    status, reply = srv.post(f"/v2/models/{MODEL}/infer", _body(x, "after"))
    assert status == 200, reply
    assert srv.get("/v2/health/ready")[0] == 200
    log = srv.log()
    for i in bad:
        (line,) = _lines_for(log, f"fault-{i}")
        assert (
            " ERROR - " in line and "failed with 500: model 'neg' failed on this request: ValueError" in line
        )
    assert "Traceback" in log and "ValueError: this model accepts no negative values" in log
    for i in set(range(n)) - bad:
        assert not _lines_for(log, f"fault-{i}")


def test_a_refused_request_is_one_warning_line(server: tuple[Server, Any]) -> None:
    srv, _ = server
    status, reply = srv.post(
        f"/v2/models/{MODEL}/infer",
        _body(np.ones((1, 3), np.float32), "bad-shape"),
        {"x-request-id": "mesh-1"},
    )
    assert status == 400 and reply["error"].endswith("(request id bad-shape)"), reply
    (line,) = _lines_for(srv.log(), "bad-shape")
    assert f"[mlserver.torchflow][{MODEL}] WARNING - " in line, line
    assert "failed with 400 (x-request-id mesh-1): input 'input-0': expected shape [-1, 4]" in line, line


def test_the_id_mlserver_generates_is_the_one_in_the_body_and_the_log(server: tuple[Server, Any]) -> None:
    srv, _ = server
    status, reply = srv.post(f"/v2/models/{MODEL}/infer", _body(-np.ones((1, 4), np.float32), None))
    assert status == 500
    match = re.search(r"\(request id ([0-9a-f-]{36})\)$", reply["error"])
    assert match, reply
    assert len(_lines_for(srv.log(), match.group(1))) == 1


def test_no_log_line_for_a_request_that_succeeds(server: tuple[Server, Any], tmp_path: Path) -> None:
    srv, _ = server
    before = srv.log().count("to model neg failed")
    assert srv.post(f"/v2/models/{MODEL}/infer", _body(np.ones((1, 4), np.float32), "fine"))[0] == 200
    assert srv.log().count("to model neg failed") == before
