"""Request limits behind a real `mlserver start`: 413 / RESOURCE_EXHAUSTED before any conversion.

Per-model limits (`parameters.extra`, then `MLSERVER_MODEL_TORCHFLOW_*`), the REST body cap
(`MLSERVER_TORCHFLOW_MAX_BODY_BYTES`) and MLServer's `grpc_max_message_length`, with parallel workers
0 and 1 (the limits reach the worker processes; the body cap lives in the main one).
"""

from __future__ import annotations

import gzip
import http.client
import json
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc.service_pb2 as pb
import tritonclient.grpc.service_pb2_grpc as pb_grpc

from tests.conftest import Saved
from tests.server import Server, write_model_settings

BODY_CAP = 64 * 1024
GRPC_MAX = 256 * 1024


@pytest.fixture(scope="module", params=[0, 1], ids=["workers0", "workers1"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, mlp: dict[str, Saved]
) -> Iterator[Server]:
    repo = tmp_path_factory.mktemp(f"limits-{request.param}")
    # `tight` sets its limits in parameters.extra (they win); `loose` inherits the env var's rows.
    write_model_settings(
        repo / "tight", "tight", mlp["pickle"].path, max_request_rows=8, max_request_elements=24
    )
    write_model_settings(repo / "loose", "loose", mlp["pickle"].path)
    env = {
        "MLSERVER_MODEL_TORCHFLOW_MAX_REQUEST_ROWS": "100",
        "MLSERVER_TORCHFLOW_MAX_BODY_BYTES": str(BODY_CAP),
    }
    with Server(repo, env=env, parallel_workers=request.param, grpc_max_message_length=GRPC_MAX).running(
        ["tight", "loose"]
    ) as srv:
        yield srv


@pytest.fixture(scope="module")
def stub(server: Server) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.grpc) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def body(rows: int, shape: list[int] | None = None) -> dict[str, Any]:
    data = np.ones((rows, 4), np.float32)
    return {
        "inputs": [
            {
                "name": "input-0",
                "datatype": "FP32",
                "shape": shape or [rows, 4],
                "data": data.ravel().tolist(),
            }
        ]
    }


def grpc_request(model: str, rows: int) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(
        model_name=model, raw_input_contents=[np.ones((rows, 4), np.float32).tobytes()]
    )
    request.inputs.add(name="input-0", datatype="FP32", shape=[rows, 4])
    return request


def test_rows_and_elements_over_the_model_limits_are_413(server: Server) -> None:
    status, reply = server.post("/v2/models/tight/infer", body(6))
    assert status == 200 and reply["outputs"][0]["shape"] == [6, 3]
    status, reply = server.post("/v2/models/tight/infer", body(9))
    assert status == 413, reply
    assert (
        "'input-0'" in reply["error"]
        and "limit of 8 rows" in reply["error"]
        and "max_request_rows" in reply["error"]
    )
    status, reply = server.post("/v2/models/tight/infer", body(7))
    assert status == 413 and "limit of 24" in reply["error"] and "max_request_elements" in reply["error"], (
        reply
    )


def test_env_limit_applies_to_a_model_that_does_not_set_it(server: Server) -> None:
    assert server.post("/v2/models/loose/infer", body(100))[0] == 200
    status, reply = server.post("/v2/models/loose/infer", body(101))
    assert status == 413 and "limit of 100 rows" in reply["error"], reply


def test_an_astronomical_declared_shape_is_refused_before_allocation(server: Server) -> None:
    for shape in ([2**40, 4], [2**62, 4], [2**63 - 1, 4]):
        status, reply = server.post("/v2/models/loose/infer", body(1, shape))
        assert status == 413, (shape, reply)
    status, reply = server.post("/v2/models/loose/infer", body(1, [0, 4]))
    assert status == 400 and "no values" in reply["error"], reply


def test_grpc_over_a_limit_is_resource_exhausted(
    server: Server, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    reply = stub.ModelInfer(grpc_request("tight", 6), timeout=30)
    assert list(reply.outputs[0].shape) == [6, 3]
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(grpc_request("tight", 9), timeout=30)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "max_request_rows" in err.value.details()


def test_grpc_message_over_grpc_max_message_length(
    server: Server, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    rows = GRPC_MAX // 16 + 1  # FP32 x 4 columns = 16 bytes a row
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(grpc_request("loose", rows), timeout=30)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in err.value.details(), err.value.details()  # grpcio's, before the runtime


def _send(
    server: Server, headers: dict[str, str], payload: Any = None, encode_chunked: bool = False
) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
    try:
        if payload is None:  # headers only: the body is refused on its declared length alone
            conn.putrequest("POST", "/v2/models/loose/infer")
            for key, value in headers.items():
                conn.putheader(key, value)
            conn.endheaders()
        else:
            conn.request(
                "POST", "/v2/models/loose/infer", body=payload, headers=headers, encode_chunked=encode_chunked
            )
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_rest_body_cap_by_declared_length_stream_and_gunzip(server: Server) -> None:
    json_type = {"Content-Type": "application/json"}
    status, reply = _send(server, {**json_type, "Content-Length": str(100 * 1024 * 1024)})
    assert status == 413 and "MLSERVER_TORCHFLOW_MAX_BODY_BYTES" in reply["error"], reply
    chunks = iter([b" " * 16384] * (2 * BODY_CAP // 16384))
    status, reply = _send(server, {**json_type, "Transfer-Encoding": "chunked"}, chunks, encode_chunked=True)
    assert status == 413 and "(streamed)" in reply["error"], reply
    bomb = gzip.compress(json.dumps(body(1)).encode()[:-1] + b" " * (50 * BODY_CAP) + b"}")
    assert len(bomb) < BODY_CAP
    status, reply = _send(server, {**json_type, "Content-Encoding": "gzip"}, bomb)
    assert status == 413 and "gunzipped" in reply["error"], reply
    status, reply = _send(
        server, {**json_type, "Content-Encoding": "gzip"}, gzip.compress(json.dumps(body(2)).encode())
    )
    assert status == 200 and reply["outputs"][0]["shape"] == [2, 3], reply
