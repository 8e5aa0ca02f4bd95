"""The gRPC lane answers as MLServer's path does: two real `mlserver start`s over the same models, one with
the lane (the default) and one without, get the same calls; status, details, the response message, the
trailing metadata and the Prometheus metrics they record must match."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.service_pb2 as pb
import tritonclient.grpc.service_pb2_grpc as pb_grpc

from tests import builders as b
from tests.conftest import Saved
from tests.server import Server, write_model_settings

InputTensor = pb.ModelInferRequest.InferInputTensor
Requested = pb.ModelInferRequest.InferRequestedOutputTensor


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory,
    mlp: dict[str, Saved],
    two_inputs: dict[str, Saved],
    dict_outputs: dict[str, Saved],
) -> Iterator[dict[str, Server]]:
    failing = b.save(b.build(b.FailsOnNegative), tmp_path_factory.mktemp("fails") / "m", "pickle")
    started: dict[str, Server] = {}
    try:
        for lane in ("true", "false"):
            repo = tmp_path_factory.mktemp(f"grpc-lane-{lane}")
            write_model_settings(repo / "mlp", "mlp", mlp["pickle"].path)
            write_model_settings(repo / "two", "two", two_inputs["pickle"].path)
            write_model_settings(repo / "dict", "dict", dict_outputs["pickle"].path)
            write_model_settings(repo / "fails", "fails", failing)
            started[lane] = Server(repo, env={"MLSERVER_TORCHFLOW_GRPC_FAST_LANE": lane}).start()
        for server in started.values():
            server.wait_ready(["mlp", "two", "dict", "fails"])
        yield started
    finally:
        for server in started.values():
            server.stop()


def raw(name: str, array: np.ndarray, datatype: str = "FP32") -> tuple[InputTensor, bytes]:
    return InputTensor(name=name, datatype=datatype, shape=list(array.shape)), array.tobytes()


def message(model: str, *inputs: tuple[InputTensor, bytes | None], **fields: Any) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, **fields)
    for tensor, data in inputs:
        request.inputs.append(tensor)
        if data is not None:
            request.raw_input_contents.append(data)
    return request


X = np.random.default_rng(3).random((3, 4), dtype=np.float32)


def contents(name: str) -> tuple[InputTensor, None]:
    values = pb.InferTensorContents(fp32_contents=X.ravel())
    return InputTensor(name=name, datatype="FP32", shape=[3, 4], contents=values), None


with_priority = message("mlp", raw("input-0", X[:1]), id="p")
with_priority.parameters["priority"].uint64_param = 2  # as tritonclient sends it
with_priority.parameters["timeout"].int64_param = 10_000_000
CASES: list[tuple[str, pb.ModelInferRequest]] = [
    ("raw, one row", message("mlp", raw("input-0", X[:1]), id="req-1")),
    ("contents, three rows, no id", message("mlp", contents("input-0"))),
    ("two inputs", message("two", raw("features", X[:2]), raw("extra", X[:2, :2]), id="t")),
    ("one output of three, contents", message("dict", contents("x"), outputs=[Requested(name="label")])),
    ("every output, raw", message("dict", raw("x", X), id="d")),
    ("priority and timeout", with_priority),
    ("a version", message("mlp", raw("input-0", X[:1]), model_version="1")),
    ("unknown model", message("nope", raw("input-0", X[:1]))),
    (
        "wrong shape",
        message("mlp", (InputTensor(name="input-0", datatype="FP32", shape=[2, 4]), X[:1].tobytes())),
    ),
    ("one buffer for two inputs", message("two", raw("features", X[:2]), (raw("extra", X[:2, :2])[0], None))),
    ("unknown output", message("mlp", raw("input-0", X[:1]), outputs=[Requested(name="nope")])),
    ("FP64 to an FP32 model", message("mlp", raw("input-0", X[:1].astype(np.float64), "FP64"), id="f")),
    ("INT32 to an FP32 model (a 400)", message("mlp", raw("input-0", np.ones((1, 4), np.int32), "INT32"))),
    ("the model fails", message("fails", raw("input-0", -X[:1]), id="boom")),
    (
        "a bad priority",
        message(
            "mlp", raw("input-0", X[:1]), parameters={"priority": pb.InferParameter(string_param="high")}
        ),
    ),
]


def call(server: Server, request: pb.ModelInferRequest) -> tuple[Any, str, Any, dict[str, str]]:
    """(status code, details, the response message or None, the trailing metadata)."""
    with grpc.insecure_channel(server.grpc) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        try:
            response, state = stub.ModelInfer.with_call(request, timeout=60)
        except grpc.RpcError as err:
            return err.code(), err.details() or "", None, dict(err.trailing_metadata() or ())
        return state.code(), "", response, dict(state.trailing_metadata() or ())


@pytest.mark.parametrize(("case", "request_message"), CASES, ids=[c[0] for c in CASES])
def test_the_lane_answers_as_mlservers_path(
    servers: dict[str, Server], case: str, request_message: pb.ModelInferRequest
) -> None:
    lane, full = (call(servers[k], request_message) for k in ("true", "false"))
    assert lane[0] == full[0], (case, lane, full)
    assert lane[1] == full[1], case
    if lane[2] is not None:
        assert lane[2].SerializeToString(deterministic=True) == full[2].SerializeToString(
            deterministic=True
        ), case
    assert lane[3] == full[3], case
    if lane[0] == grpc.StatusCode.OK:
        assert lane[3]["ce-modelid"] == request_message.model_name
    else:
        assert "Traceback" not in lane[1]


def test_the_answers_are_the_models(servers: dict[str, Server], dict_outputs: dict[str, Saved]) -> None:
    """Not only the same as MLServer's: right. tritonclient with its defaults, through the lane."""
    client = triton.InferenceServerClient(servers["true"].grpc)
    x = triton.InferInput("x", list(X.shape), "FP32")
    x.set_data_from_numpy(X)
    result = client.infer("dict", [x])
    expected = dict_outputs["pickle"].expected(X)
    for name in ("logits", "probs", "label"):
        np.testing.assert_allclose(result.as_numpy(name), expected[name], rtol=1e-5, atol=1e-6)


METRICS = r"^(model_infer_request_(?:success|failure)_total|model_infer_request_duration_count|grpc_server_(?:started|handled)_total)\{(.*)\} (\S+)$"


def metrics(server: Server) -> dict[tuple[str, ...], float]:
    found = {}
    for name, labels, value in re.findall(METRICS, server.metrics(), re.M):
        parsed = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if name.startswith("grpc") and parsed.get("grpc_method") != "ModelInfer":
            continue
        found[(name, *sorted(parsed.items()))] = float(value)  # type: ignore[arg-type]
    return found


def test_the_lane_records_mlservers_metrics(servers: dict[str, Server]) -> None:
    before = {k: metrics(s) for k, s in servers.items()}
    for _, request_message in CASES:
        for server in servers.values():
            call(server, request_message)
    delta = {}
    for key, server in servers.items():
        after = metrics(server)
        delta[key] = {
            k: v - before[key].get(k, 0.0) for k, v in after.items() if v != before[key].get(k, 0.0)
        }
    assert delta["true"] == delta["false"]
    success = [k for k in delta["true"] if k[0] == "model_infer_request_success_total"]
    assert sum(delta["true"][k] for k in success) == 7  # the seven cases that succeed
    failure = [k for k in delta["true"] if k[0] == "model_infer_request_failure_total"]
    # Refused inside the data plane: every error case (an unknown version too) but the raw buffer count,
    # refused while the request is converted, before MLServer's data plane (and its metrics) sees it.
    assert sum(delta["true"][k] for k in failure) == 7
    codes = {dict(k[1:]).get("grpc_code") for k in delta["true"] if k[0] == "grpc_server_handled_total"}
    assert codes == {
        "OK"
    }  # MLServer's interceptor counts only calls that return: an abort is not an RpcError


def test_the_lane_is_on_by_default_and_off_when_asked(servers: dict[str, Server]) -> None:
    assert "takes the lane (grpc_fast_lane)" in servers["true"].log()
    assert "takes the lane" not in servers["false"].log()
