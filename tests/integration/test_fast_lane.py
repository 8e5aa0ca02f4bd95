"""The REST fast lane answers as MLServer's full path does: two real `mlserver start`s over the same models,
one with the lane (the default) and one without, get the same requests; status, body, the headers a
client reads, and the Prometheus request metrics they record must match."""

from __future__ import annotations

import gzip
import http.client
import json
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from tests.conftest import Saved
from tests.server import Server, write_model_settings

BODY_CAP = 64 * 1024
HEADERS = ("content-type", "content-encoding", "content-length", "vary", "inference-header-content-length")


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, mlp: dict[str, Saved]) -> Iterator[dict[str, Server]]:
    started: dict[str, Server] = {}
    try:
        for lane in ("true", "false"):
            repo = tmp_path_factory.mktemp(f"lane-{lane}")
            write_model_settings(repo / "mlp", "mlp", mlp["pickle"].path)
            env = {
                "MLSERVER_TORCHFLOW_MAX_BODY_BYTES": str(BODY_CAP),
                "MLSERVER_TORCHFLOW_REST_FAST_LANE": lane,
            }
            started[lane] = Server(repo, env=env).start()
        for server in started.values():
            server.wait_ready(["mlp"])
        yield started
    finally:
        for server in started.values():
            server.stop()


def send(
    server: Server, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(server.http, timeout=60)
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        got = {k.lower(): v for k, v in response.getheaders() if k.lower() in HEADERS}
        return response.status, got, response.read()
    finally:
        conn.close()


def request_metrics(server: Server) -> dict[tuple[str, str, str], float]:
    """rest_server_requests_total and the histogram's count, by (path, status, metric), for POSTs."""
    found: dict[tuple[str, str, str], float] = {}
    pattern = r"^(rest_server_requests_total|rest_server_request_duration_seconds_count)\{(.*)\} (\S+)$"
    for name, labels, value in re.findall(pattern, server.metrics(), re.M):
        parsed = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if parsed.get("method") == "POST":
            assert parsed["app_name"] == "mlserver"
            found[(parsed["path"], parsed["status_code"], name)] = float(value)
    return found


def _json(rows: int) -> bytes:
    x = np.random.default_rng(rows).random((rows, 4), dtype=np.float32)
    return json.dumps(
        {"inputs": [{"name": "input-0", "datatype": "FP32", "shape": [rows, 4], "data": x.ravel().tolist()}]}
    ).encode()


JSON = {"Content-Type": "application/json"}
CASES: list[tuple[str, str, bytes, dict[str, str]]] = [
    ("one row", "/v2/models/mlp/infer", _json(1), JSON),
    ("gzip asked, small answer", "/v2/models/mlp/infer", _json(1), {**JSON, "Accept-Encoding": "gzip"}),
    ("gzip asked, large answer", "/v2/models/mlp/infer", _json(40), {**JSON, "Accept-Encoding": "gzip"}),
    ("gzip'd body", "/v2/models/mlp/infer", gzip.compress(_json(3)), {**JSON, "Content-Encoding": "gzip"}),
    ("a version", "/v2/models/mlp/versions/7/infer", _json(1), JSON),
    ("unknown model", "/v2/models/nope/infer", _json(1), JSON),
    ("not JSON", "/v2/models/mlp/infer", b"{not json", JSON),
    ("not a request", "/v2/models/mlp/infer", b'{"inputs": 3}', JSON),
    ("wrong shape", "/v2/models/mlp/infer", _json(1).replace(b"[1, 4]", b"[2, 4]"), JSON),
    ("over the body cap", "/v2/models/mlp/infer", b" " * (BODY_CAP + 1), JSON),
    (
        "binary, lying sizes",
        "/v2/models/mlp/infer",
        b'{"inputs": []}xx',
        {"Inference-Header-Content-Length": "99"},
    ),
]


@pytest.mark.parametrize(("case", "path", "body", "headers"), CASES, ids=[c[0] for c in CASES])
def test_the_lane_answers_as_the_full_path(
    servers: dict[str, Server], case: str, path: str, body: bytes, headers: dict[str, str]
) -> None:
    lane, full = (send(servers[k], path, body, headers) for k in ("true", "false"))
    assert lane[0] == full[0], (case, lane, full)
    for _, headers_got, body_got in (lane, full):
        assert int(headers_got["content-length"]) == len(body_got)
        if headers_got.get("content-encoding") == "gzip":  # the compressed size varies with the ids inside
            headers_got.pop("content-length")
    assert lane[1] == full[1], case
    decoded = [
        gzip.decompress(r[2]) if r[1].get("content-encoding") == "gzip" else r[2] for r in (lane, full)
    ]
    answers = [json.loads(re.sub(rb"request id [0-9a-f-]+", b"request id", d)) for d in decoded]
    for answer in answers:
        answer.pop("id", None)  # a fresh one per request
    assert answers[0] == answers[1], case
    if lane[0] >= 400:
        assert set(answers[0]) <= {"error", "detail"}, answers[0]


def test_the_lane_records_mlservers_request_metrics(servers: dict[str, Server]) -> None:
    before = {k: request_metrics(s) for k, s in servers.items()}
    for _, path, body, headers in CASES:
        for server in servers.values():
            send(server, path, body, headers)
    delta: dict[str, dict[Any, float]] = {}
    for key, server in servers.items():
        after = request_metrics(server)
        delta[key] = {
            k: v - before[key].get(k, 0.0) for k, v in after.items() if v != before[key].get(k, 0.0)
        }
    assert delta["true"] == delta["false"]
    templates = {path for path, _, _ in delta["true"]}
    assert templates == {
        "/v2/models/{model_name}/infer",
        "/v2/models/{model_name}/versions/{model_version}/infer",
    }
    assert delta["true"][("/v2/models/{model_name}/infer", "200", "rest_server_requests_total")] == 4


def test_the_lane_is_on_by_default_and_off_when_asked(servers: dict[str, Server]) -> None:
    assert "takes the fast lane" in servers["true"].log()
    assert "takes the fast lane" not in servers["false"].log()
