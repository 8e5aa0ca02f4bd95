"""Triton's binary tensor data over REST, behind a real `mlserver start`, sent as raw HTTP: lying sizes are
400s, an oversized body a 413, gzip'd bodies work, the request limits hold, another runtime's model gets its
binary inputs as lists, and the curl example in docs/clients.md runs as written."""

from __future__ import annotations

import gzip
import http.client
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import Saved
from tests.server import Server, write_model_settings

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "model-settings" / "mlp" / "model"
BODY_CAP = 64 * 1024
ECHO = '''
from mlserver import MLModel
from mlserver.types import InferenceResponse, ResponseOutput


class Echo(MLModel):
    """Another runtime's model: answers each input as an output of the same name."""

    async def predict(self, payload):
        outputs = [
            ResponseOutput(name=i.name, shape=i.shape, datatype=i.datatype, data=list(i.data))
            for i in payload.inputs
        ]
        return InferenceResponse(model_name=self.name, outputs=outputs)
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, mlp: dict[str, Saved]) -> Iterator[Server]:
    repo = tmp_path_factory.mktemp("repo")
    write_model_settings(repo / "mlp", "mlp", mlp["pickle"].path)
    write_model_settings(repo / "small", "small", mlp["pickle"].path, max_request_elements=16)
    write_model_settings(repo / "example", "example", EXAMPLE)
    (repo / "echo").mkdir()
    (repo / "echo" / "echo_runtime.py").write_text(ECHO)
    (repo / "echo" / "model-settings.json").write_text(
        json.dumps({"name": "echo", "implementation": "echo_runtime.Echo"})
    )
    env = {"MLSERVER_TORCHFLOW_MAX_BODY_BYTES": str(BODY_CAP)}
    with Server(repo, env=env).running(["mlp", "small", "example", "echo"]) as running:
        yield running


def post(
    server: Server, model: str, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(server.http, timeout=60)
    try:
        conn.request("POST", f"/v2/models/{model}/infer", body=body, headers=headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def framed(inputs: list[dict[str, Any]], *buffers: bytes, **request: Any) -> tuple[bytes, dict[str, str]]:
    header = json.dumps({"inputs": inputs, **request}).encode()
    return header + b"".join(buffers), {"Inference-Header-Content-Length": str(len(header))}


def fp32_input(name: str, array: np.ndarray) -> dict[str, Any]:
    return {
        "name": name,
        "shape": list(array.shape),
        "datatype": "FP32",
        "parameters": {"binary_data_size": array.nbytes},
    }


def binary_answer(headers: dict[str, str], body: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    size = int(headers["inference-header-content-length"])
    header = json.loads(body[:size])
    arrays, at = {}, size
    for out in header["outputs"]:
        if "binary_data_size" not in (out.get("parameters") or {}):
            continue  # this one came as JSON data
        n = out["parameters"]["binary_data_size"]
        dtype = {"FP32": np.float32, "INT64": np.int64, "BYTES": None}[out["datatype"]]
        arrays[out["name"]] = (
            np.frombuffer(body[at : at + n], dtype).reshape(out["shape"]) if dtype else body[at : at + n]
        )
        at += n
    assert at == len(body)
    return header, arrays


def test_binary_in_and_out(server: Server, mlp: dict[str, Saved]) -> None:
    x = np.random.default_rng(1).random((5, 4), dtype=np.float32)
    body, headers = framed([fp32_input("input-0", x)], x.tobytes(), parameters={"binary_data_output": True})
    status, got_headers, answer = post(server, "mlp", body, headers)
    assert status == 200, answer
    assert got_headers["content-type"] == "application/octet-stream"
    _, arrays = binary_answer(got_headers, answer)
    np.testing.assert_allclose(arrays["output-0"], mlp["pickle"].expected(x), rtol=1e-5, atol=1e-5)


def test_gzipped_binary_body(server: Server, mlp: dict[str, Saved]) -> None:
    x = np.random.default_rng(2).random((3, 4), dtype=np.float32)
    body, headers = framed([fp32_input("input-0", x)], x.tobytes())
    status, got_headers, answer = post(
        server, "mlp", gzip.compress(body), {**headers, "Content-Encoding": "gzip"}
    )
    assert status == 200, answer
    assert got_headers["content-type"] == "application/json"  # JSON stays the answer unless binary is asked
    (out,) = json.loads(answer)["outputs"]
    np.testing.assert_allclose(
        np.reshape(out["data"], out["shape"]), mlp["pickle"].expected(x), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize(
    ("case", "status", "words"),
    [
        ("header longer than body", 400, "Inference-Header-Content-Length is"),
        ("size against shape", 400, "input 'input-0': shape \\[2, 4\\] holds 8 FP32 values"),
        ("bytes missing", 400, "only 16 bytes"),
        ("bytes left over", 400, "add up to 32"),
        ("header not a number", 400, "non-negative integer"),
        ("over the body cap", 413, "larger than this server's limit"),
    ],
)
def test_lying_or_oversized_bodies_are_refused_with_an_error_body(
    server: Server, case: str, status: int, words: str
) -> None:
    x = np.zeros((2, 4), dtype=np.float32)
    spec = fp32_input("input-0", x)
    body, headers = framed([spec], x.tobytes())
    if case == "header longer than body":
        headers["Inference-Header-Content-Length"] = str(len(body) + 1)
    elif case == "size against shape":
        body, headers = framed([{**spec, "parameters": {"binary_data_size": 16}}], x.tobytes()[:16])
    elif case == "bytes missing":
        body = body[:-16]
    elif case == "bytes left over":
        body += b"\0" * 4
    elif case == "header not a number":
        headers["Inference-Header-Content-Length"] = "ten"
    else:
        big = np.zeros((BODY_CAP // 16 + 1, 4), dtype=np.float32)
        body, headers = framed([fp32_input("input-0", big)], big.tobytes())
    got, _, answer = post(server, "mlp", body, headers)
    assert got == status, answer
    error = json.loads(answer)["error"]
    assert re.search(words, error), error
    assert "Traceback" not in error
    # the server still answers a good request
    assert post(server, "mlp", *framed([spec], x.tobytes()))[0] == 200


def test_request_limits_hold_for_binary_tensors(server: Server) -> None:
    x = np.zeros((5, 4), dtype=np.float32)  # 20 values, the model takes at most 16
    status, _, answer = post(server, "small", *framed([fp32_input("input-0", x)], x.tobytes()))
    assert status == 413, answer
    assert "max_request_elements" in json.loads(answer)["error"]


def test_another_runtime_gets_binary_inputs_as_lists(server: Server) -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    words = [b"ab", b"cde"]
    raw = b"".join(struct.pack("<I", len(w)) + w for w in words)
    inputs = [
        fp32_input("x", x),
        {"name": "s", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": len(raw)}},
    ]
    body, headers = framed(
        inputs, x.tobytes(), raw, outputs=[{"name": "x", "parameters": {"binary_data": True}}, {"name": "s"}]
    )
    status, got_headers, answer = post(server, "echo", body, headers)
    assert status == 200, answer
    header, arrays = binary_answer(got_headers, answer)
    np.testing.assert_array_equal(arrays["x"], x)
    (s,) = [o for o in header["outputs"] if o["name"] == "s"]
    assert [w.encode() if isinstance(w, str) else w for w in s["data"]] == words


def _docs_block() -> str:
    text = (REPO / "docs" / "clients.md").read_text()
    match = re.search(r"<!-- curl-binary -->\s*```bash\n(.*?)```", text, re.S)
    assert match, "docs/clients.md lost its curl-binary example"
    return match.group(1)


def test_the_docs_curl_binary_example_runs(server: Server, tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.fail("curl is not installed; the docs' example needs it")
    script = _docs_block().replace("localhost:8080", server.http).replace("/models/mlp/", "/models/example/")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    (out,) = json.loads(done.stdout)["outputs"]
    x = np.arange(4, dtype=np.float32).reshape(1, 4)  # what the example writes
    status, answer = server.post(
        "/v2/models/example/infer",
        {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP32", "data": x.ravel().tolist()}]},
    )
    assert status == 200, answer
    (want,) = answer["outputs"]
    assert out["name"] == want["name"] == "output-0" and out["shape"] == [1, 3]
    np.testing.assert_allclose(out["data"], want["data"], rtol=1e-6)
