"""Property-based fuzzing of a real `mlserver start` with malformed V2 requests, over REST and gRPC.

Hypothesis generates wrong types, datatypes and shapes; huge, negative and zero dimensions; mismatched
lengths; unknown and duplicated names; non-finite values; enormous strings; deep nesting; raw bytes and
wrong content types. The invariants, for every case:

- the answer is a client error (REST 4xx; gRPC INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION,
  RESOURCE_EXHAUSTED), never a 5xx / INTERNAL / UNKNOWN, a traceback or a hang (every call has a
  timeout); or, when the generated request happens to be valid, a 200 whose output equals the
  in-process forward of that very input;
- the server stays live, and a valid request right after is served correctly.

One server (module fixture) serves three models: `mlp` (no batching), `mlpb` (the runtime's batcher) and
`two` (two named inputs). The run is bounded: `FUZZ_EXAMPLES` examples per test (default 300),
derandomized so CI is reproducible; set `FUZZ_SEED` to explore other cases. The number of cases and
the answers seen are printed at the end of the module (`pytest -s`) and written to `$FUZZ_REPORT`.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import sys
from collections import Counter
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc.service_pb2 as pb
import tritonclient.grpc.service_pb2_grpc as pb_grpc
from hypothesis import HealthCheck, example, given, seed, settings
from hypothesis import strategies as st

from tests.conftest import Saved
from tests.server import Server, write_model_settings

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize="FUZZ_SEED" not in os.environ,
    database=None,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)
SEED = int(os.environ.get("FUZZ_SEED", "0"))
TIMEOUT = 30.0
GRPC_MAX = 1024 * 1024  # the fuzz server's grpc_max_message_length, to reach that limit cheaply
INPUTS = {"mlp": {"input-0": 4}, "mlpb": {"input-0": 4}, "two": {"features": 4, "extra": 2}}
CLIENT_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
COUNTS: Counter[str] = Counter()
# json.dumps and hypothesis' example printer recurse once per nesting level of what they are given.
sys.setrecursionlimit(max(sys.getrecursionlimit(), 20_000))
# Not imported from mlserver_torchflow: that pulls in MLServer's protobufs, which clash with tritonclient's.
V2_TO_NUMPY = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, mlp: dict[str, Saved], two_inputs: dict[str, Saved]
) -> Iterator[Server]:
    repo = tmp_path_factory.mktemp("fuzz")
    write_model_settings(repo / "mlp", "mlp", mlp["pickle"].path)
    write_model_settings(
        repo / "mlpb", "mlpb", mlp["pickle"].path, mlserver={"max_batch_size": 16, "max_batch_time": 0.005}
    )
    write_model_settings(repo / "two", "two", two_inputs["pickle"].path)
    srv = Server(repo, grpc_max_message_length=GRPC_MAX).start()
    try:
        srv.wait_ready(list(INPUTS))
        yield srv
    finally:
        srv.stop()
        report = ", ".join(f"{k}: {v}" for k, v in sorted(COUNTS.items()))
        print(f"\nfuzz cases: {sum(v for k, v in COUNTS.items() if k.startswith('case'))}; {report}")
        if os.environ.get("FUZZ_REPORT"):
            with open(os.environ["FUZZ_REPORT"], "w") as f:
                json.dump(dict(COUNTS), f, indent=1, sort_keys=True)
    # MLServer logs every gRPC client error with its traceback, so look for the signs of a 500:
    # uvicorn's unhandled exception, and the runtime's "model raised" (a valid request failing).
    log = srv.log()
    for sign in ("Exception in ASGI application", "raised on request"):
        assert sign not in log, log[log.index(sign) - 3000 : log.index(sign) + 3000]


@pytest.fixture(scope="module")
def models(mlp: dict[str, Saved], two_inputs: dict[str, Saved]) -> dict[str, Saved]:
    return {"mlp": mlp["pickle"], "mlpb": mlp["pickle"], "two": two_inputs["pickle"]}


@pytest.fixture(scope="module")
def channel(server: Server) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.grpc) as chan:
        yield chan


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(channel)


# --- talking to the server ------------------------------------------------------------------------


def post(server: Server, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=TIMEOUT)
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def expected_outputs(models: dict[str, Saved], model: str, arrays: dict[str, np.ndarray]) -> np.ndarray:
    names = list(INPUTS[model])
    return np.asarray(models[model].expected(*(arrays[n].astype(np.float32) for n in names)))


def check_rest_answer(
    models: dict[str, Saved], model: str, request: Any, status: int, body: bytes, kind: str
) -> None:
    """A 4xx with a JSON error and no traceback; or a 200 whose output is the forward of this input."""
    COUNTS[f"{kind} {status}"] += 1
    text = body.decode(errors="replace")
    assert status != 0 and status < 500, f"{status} for {_clip(request)}: {text[:2000]}"
    assert "Traceback" not in text, text[:2000]
    if status >= 400:
        payload = json.loads(body)
        assert isinstance(payload, dict) and ("error" in payload or "detail" in payload), text[:500]
        return
    assert status == 200, f"{status}: {text[:500]}"
    if not isinstance(request, dict):  # raw bytes a JSON parser happened to accept as a request
        return
    # The server accepted it: it must have computed exactly the forward pass of what was sent.
    arrays = {
        i["name"]: np.asarray(i["data"]).astype(V2_TO_NUMPY[i["datatype"]]).reshape(i["shape"])
        for i in request["inputs"]
    }
    out = json.loads(body)["outputs"][0]
    got = np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])
    np.testing.assert_allclose(got, expected_outputs(models, model, arrays), rtol=1e-4, atol=1e-3)


def still_serving(server: Server, models: dict[str, Saved], stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    """Live, and a valid request right after is answered correctly over both transports."""
    assert server.get("/v2/health/live")[0] == 200
    x = np.arange(8, dtype=np.float32).reshape(2, 4) / 7
    status, body = post(
        server,
        "/v2/models/mlp/infer",
        json.dumps(
            {"inputs": [{"name": "input-0", "datatype": "FP32", "shape": [2, 4], "data": x.tolist()}]}
        ).encode(),
        {"Content-Type": "application/json"},
    )
    assert status == 200, body[:500]
    out = json.loads(body)["outputs"][0]
    np.testing.assert_allclose(
        np.asarray(out["data"]).reshape(2, 3), models["mlp"].expected(x), rtol=1e-5, atol=1e-5
    )
    request = pb.ModelInferRequest(model_name="mlpb", raw_input_contents=[x.tobytes()])
    request.inputs.add(name="input-0", datatype="FP32", shape=[2, 4])
    reply = stub.ModelInfer(request, timeout=TIMEOUT)
    got = np.frombuffer(reply.raw_output_contents[0], np.float32).reshape(2, 3)
    np.testing.assert_allclose(got, models["mlpb"].expected(x), rtol=1e-5, atol=1e-5)


def _clip(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 600 else text[:600] + "..."


# --- what to send ---------------------------------------------------------------------------------

SPECIAL_DIMS = [0, -1, -(2**63), 2**31, 2**32, 2**53, 2**62, 2**63 - 1, 2**63, 2**64, 2**70, 10**30]
DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"]
DATATYPES += ["FP16", "FP32", "FP64", "BYTES", "BF16", "fp32", "", "FP32 ", "STRING"]


def huge_text(min_size: int = 1_000, max_size: int = 300_000) -> st.SearchStrategy[str]:
    return st.integers(min_size, max_size).map(lambda n: "x" * n)


def nested(depth: int) -> Any:
    value: Any = [1.0, 2.0, 3.0, 4.0]
    for _ in range(depth):
        value = [value]
    return value


names = st.one_of(
    st.sampled_from(["input-0", "features", "extra"]),
    st.text(max_size=12),
    huge_text(),
    st.none(),
    st.integers(),
)
datatypes = st.one_of(
    st.sampled_from(DATATYPES),
    st.text(max_size=8),
    huge_text(),
    st.none(),
    st.integers(),
    st.lists(st.text(max_size=2), max_size=2),
)
dims = st.one_of(st.integers(-3, 40), st.sampled_from(SPECIAL_DIMS))
shapes = st.one_of(
    st.lists(dims, max_size=6),
    st.lists(
        st.one_of(st.floats(), st.text(max_size=3), st.none(), st.booleans(), dims), min_size=1, max_size=4
    ),
    st.integers(1, 300).map(lambda n: [1] * n),  # rank far beyond any model (and numpy's 64)
    st.one_of(
        st.integers(),
        st.text(max_size=5),
        st.none(),
        st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
    ),
)
scalars = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**70), 2**70),
    st.text(max_size=4),
    st.none(),
    st.booleans(),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)
data = st.one_of(
    st.lists(st.floats(-1e6, 1e6, width=32), max_size=40),
    st.lists(st.lists(st.floats(-1e6, 1e6, width=32), max_size=6), max_size=8),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=12),  # NaN: not JSON -> 422
    st.lists(st.floats(min_value=1e38, max_value=1.7e308), min_size=4, max_size=8),  # inf once FP32
    st.lists(st.integers(-(2**70), 2**70), max_size=12),
    st.lists(scalars, max_size=10),
    st.lists(st.booleans(), max_size=8),
    scalars,
    st.integers(1, 3_000).map(nested),  # deeper than any rank; past 1024 levels JSON parsing refuses
    huge_text(),
    st.integers(1_000, 200_000).map(lambda n: [0.5] * n),  # a long list for a short shape
)


@st.composite
def near_valid_input(draw: st.DrawFn, model: str, name: str, rows: int) -> dict[str, Any]:
    """An input that is right or wrong in one or two small ways, to reach the deeper checks."""
    if draw(st.integers(0, 9)) == 0:
        name = draw(st.sampled_from(list(INPUTS[model])))  # sometimes twice the same, one missing
    width = INPUTS[model][name]
    shape: list[int] = [rows, width]
    mutation = draw(st.sampled_from(["none", "none", "rows", "width", "rank", "count", "dtype", "nest"]))
    values = draw(st.lists(st.floats(-100, 100, width=32), min_size=rows * width, max_size=rows * width))
    datatype = "FP32"
    payload: Any = values
    if mutation == "rows":
        shape[0] = draw(st.sampled_from(SPECIAL_DIMS))
    elif mutation == "width":
        shape[1] = draw(dims.filter(lambda d: d != width))
    elif mutation == "rank":
        shape = draw(st.lists(st.integers(0, 5), max_size=5).filter(lambda s: len(s) != 2)) or [rows * width]
    elif mutation == "count":
        payload = [*values, 1.0] if values and draw(st.booleans()) else values[:-1]
    elif mutation == "dtype":
        datatype = draw(st.sampled_from(DATATYPES))
        if datatype.startswith(("INT", "UINT", "BOOL")) and draw(st.booleans()):
            payload = [int(v) for v in values] if datatype != "BOOL" else [v > 0 for v in values]
    elif mutation == "nest" and rows:
        payload = [values[i * width : (i + 1) * width] for i in range(rows)]
        if draw(st.booleans()):
            payload = [[row] for row in payload]  # nested one level deeper than the shape
    return {"name": name, "datatype": datatype, "shape": shape, "data": payload}


@st.composite
def rest_request(draw: st.DrawFn) -> tuple[str, Any]:
    model = draw(st.sampled_from(list(INPUTS)))
    if draw(st.booleans()):
        # One row count for all inputs (see grpc_request for why).
        rows = draw(st.integers(0, 40))
        inputs = [draw(near_valid_input(model, name, rows)) for name in INPUTS[model]]
        if draw(st.integers(0, 9)) == 0 and inputs:
            inputs.append(dict(inputs[0]))  # a duplicated name
    else:
        fields = {"name": names, "datatype": datatypes, "shape": shapes, "data": data}
        inputs = []
        for _ in range(draw(st.integers(0, 3))):
            dropped = draw(st.sets(st.sampled_from(list(fields)), max_size=1))
            inputs.append({k: draw(v) for k, v in fields.items() if k not in dropped})
    request: dict[str, Any] = {"inputs": inputs}
    extra = draw(st.sampled_from(["none", "none", "outputs", "id", "parameters", "inputs", "missing"]))
    if extra == "outputs":
        request["outputs"] = [{"name": draw(names)} for _ in range(draw(st.integers(1, 2)))]
    elif extra == "id":
        request["id"] = draw(st.one_of(st.text(max_size=5), st.integers(), st.none(), huge_text()))
    elif extra == "parameters":
        request["parameters"] = draw(
            st.one_of(st.dictionaries(st.text(max_size=8), scalars, max_size=3), scalars)
        )
        if draw(st.booleans()):
            request["parameters"] = {"deep": nested(draw(st.integers(1, 2000)))}
    elif extra == "inputs":
        request["inputs"] = draw(st.one_of(st.none(), st.text(max_size=4), st.integers(), st.just({})))
    elif extra == "missing":
        del request["inputs"]
    return model, request


@given(case=rest_request())
# Were 500s before validation_errors.py: ~1000 levels (JSON allows 1024) made FastAPI's 422 handler
# recurse past Python's limit while echoing the input back.
@example(case=("mlp", {"inputs": [{"datatype": "FP32", "shape": [1, 4], "data": nested(1015)}]}))
@example(case=("mlp", {"inputs": [nested(1015)]}))
@example(
    case=("two", {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": nested(3)}]})
)
@seed(SEED)
@FUZZ
def test_rest_malformed_json_requests(
    server: Server, models: dict[str, Saved], stub: pb_grpc.GRPCInferenceServiceStub, case: tuple[str, Any]
) -> None:
    model, request = case
    COUNTS["case rest json"] += 1
    # Again here: something imported by other test modules (torch, hypothesis) may have lowered it since.
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 20_000))
    body = json.dumps(request, allow_nan=True).encode()  # NaN/Infinity tokens are not JSON: a 4xx
    status, answer = post(server, f"/v2/models/{model}/infer", body, {"Content-Type": "application/json"})
    check_rest_answer(models, model, request, status, answer, "rest json")
    still_serving(server, models, stub)


CONTENT_TYPES = [None, "application/json", "text/plain", "application/octet-stream", "multipart/form-data"]
CONTENT_TYPES += [
    "application/x-www-form-urlencoded",
    "application/problem+json",
    "application/json; charset=latin-1",
]
VALID = b'{"inputs": [{"name": "input-0", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}'


@st.composite
def raw_body(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    kind = draw(st.sampled_from(["binary", "text", "truncated", "nesting", "gzip", "valid-other-type"]))
    if kind == "binary":
        body = draw(st.binary(max_size=4000))
    elif kind == "text":
        body = draw(st.text(max_size=400)).encode("utf-8", "surrogatepass")
    elif kind == "truncated":
        body = VALID[: draw(st.integers(0, len(VALID) - 1))]
    elif kind == "nesting":
        depth = draw(st.integers(1, 200_000))
        body = (
            b'{"inputs": [{"name": "input-0", "datatype": "FP32", "shape": [1, 4], "data": '
            + b"[" * depth
            + b"]" * depth
            + b"}]}"
        )
    elif kind == "gzip":
        body = draw(st.binary(max_size=200))
    else:
        body = VALID
    headers: dict[str, str] = {}
    content_type = draw(st.sampled_from(CONTENT_TYPES))
    if kind == "valid-other-type":
        content_type = draw(st.sampled_from([c for c in CONTENT_TYPES if c != "application/json" and c]))
    if content_type:
        headers["Content-Type"] = content_type
    if kind == "gzip" or draw(st.integers(0, 9)) == 0:
        headers["Content-Encoding"] = "gzip"
    return body, headers


@given(case=raw_body())
@seed(SEED)
@FUZZ
def test_rest_raw_bodies_and_content_types(
    server: Server,
    models: dict[str, Saved],
    stub: pb_grpc.GRPCInferenceServiceStub,
    case: tuple[bytes, dict[str, str]],
) -> None:
    body, headers = case
    COUNTS["case rest raw"] += 1
    status, answer = post(server, "/v2/models/mlp/infer", body, headers)
    if status == 200:
        # Only a valid request may succeed: FastAPI parses a body without a JSON content type too.
        assert json.loads(answer)["outputs"][0]["shape"] == [1, 3]
        COUNTS["rest raw 200"] += 1
    else:
        check_rest_answer(models, "mlp", body, status, answer, "rest raw")
    still_serving(server, models, stub)


@st.composite
def binary_request(draw: st.DrawFn) -> tuple[str, bytes, dict[str, str], dict[str, np.ndarray] | None]:
    """Triton's binary framing, valid or lying: header lengths, sizes, shapes, datatypes and orders."""
    model = draw(st.sampled_from(sorted(INPUTS)))
    rows = draw(st.integers(1, 3))
    arrays = {
        n: np.random.default_rng(rows).random((rows, w), dtype=np.float32) for n, w in INPUTS[model].items()
    }
    inputs, chunks = [], []
    for name, array in arrays.items():
        size = draw(st.one_of(st.just(array.nbytes), st.integers(-2, array.nbytes + 9), st.text(max_size=3)))
        datatype = draw(st.sampled_from(["FP32", "FP32", "FP64", "INT64", "BYTES", "BF16"]))
        shape = draw(st.one_of(st.just(list(array.shape)), st.lists(st.integers(-1, 2**40), max_size=3)))
        inputs.append(
            {"name": name, "shape": shape, "datatype": datatype, "parameters": {"binary_data_size": size}}
        )
        chunks.append(array.tobytes())
    if draw(st.booleans()):
        inputs.reverse()
    header = json.dumps(
        {"inputs": inputs, "parameters": {"binary_data_output": draw(st.booleans())}}
    ).encode()
    tail = b"".join(chunks) + draw(st.sampled_from([b"", b"\0", b"\0" * 64]))
    length = draw(
        st.one_of(
            st.just(str(len(header))),
            st.integers(-3, len(header) + 80).map(str),
            st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=4),
        )
    )
    headers = {"Inference-Header-Content-Length": length}
    valid = (
        length == str(len(header))
        and tail == b"".join(chunks)
        and all(
            i["datatype"] == "FP32"
            and i["shape"] == list(arrays[i["name"]].shape)
            and i["parameters"]["binary_data_size"] == arrays[i["name"]].nbytes
            for i in inputs
        )
        and [i["name"] for i in inputs] == list(arrays)
    )
    return model, header + tail, headers, arrays if valid else None


@given(case=binary_request())
@seed(SEED)
@FUZZ
def test_rest_binary_tensors(
    server: Server,
    models: dict[str, Saved],
    stub: pb_grpc.GRPCInferenceServiceStub,
    case: tuple[str, bytes, dict[str, str], dict[str, np.ndarray] | None],
) -> None:
    """Any framing is answered: a 4xx with `{"error"}` when it does not add up, the right answer when it does."""
    model, body, headers, valid = case
    COUNTS["case rest binary"] += 1
    status, answer = post(server, f"/v2/models/{model}/infer", body, headers)
    COUNTS[f"rest binary {status}"] += 1
    text = answer.decode(errors="replace")
    assert 0 < status < 500 and "Traceback" not in text, f"{status}: {text[:2000]}"
    if valid is not None:
        assert status == 200, text[:2000]
    if status != 200:
        assert "error" in json.loads(answer) or "detail" in json.loads(answer), text[:500]
    still_serving(server, models, stub)


# --- gRPC -----------------------------------------------------------------------------------------

int64s = st.one_of(
    st.integers(-(2**63), 2**63 - 1), st.sampled_from([d for d in SPECIAL_DIMS if -(2**63) <= d < 2**63])
)
CONTENTS = {
    "fp32_contents": st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), max_size=40),
    "fp64_contents": st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=40),
    "int_contents": st.lists(st.integers(-(2**31), 2**31 - 1), max_size=40),
    "int64_contents": st.lists(st.integers(-(2**63), 2**63 - 1), max_size=40),
    "uint_contents": st.lists(st.integers(0, 2**32 - 1), max_size=40),
    "uint64_contents": st.lists(st.integers(0, 2**64 - 1), max_size=40),
    "bool_contents": st.lists(st.booleans(), max_size=40),
    "bytes_contents": st.lists(st.binary(max_size=20), max_size=5),
}


@st.composite
def grpc_request(draw: st.DrawFn) -> tuple[pb.ModelInferRequest, bool]:
    model = draw(st.sampled_from([*INPUTS, *INPUTS, *INPUTS, "", "nope", "MLP"]))
    request_id = draw(st.one_of(st.just(""), st.uuids().map(str), st.text(max_size=5)))
    request = pb.ModelInferRequest(model_name=model, id=request_id)
    wide = INPUTS.get(model, {"input-0": 4})
    near = draw(st.integers(0, 3)) > 0
    use_raw = draw(st.booleans())
    # One row count for all inputs: rows that disagree pass the signature ([-1, 4] and [-1, 2]) and
    # reach the model, whose own error is a 500 by design (a model may take inputs of unrelated lengths).
    rows = draw(st.integers(0, 40))
    for name in wide if near else range(draw(st.integers(0, 3))):
        tensor = request.inputs.add()
        if near:
            tensor.name = str(name)
            tensor.datatype = draw(st.sampled_from(["FP32"] * 8 + DATATYPES))
            shape = draw(st.sampled_from([[rows, wide[str(name)]]] * 3 + [None]))
            tensor.shape.extend(shape if shape is not None else draw(st.lists(int64s, max_size=4)))
            count = rows * wide[str(name)] + draw(st.sampled_from([0, 0, 0, -1, 1]))
            values = draw(
                st.lists(
                    st.floats(allow_nan=True, allow_infinity=True, width=32),
                    min_size=max(count, 0),
                    max_size=max(count, 0),
                )
            )
            if use_raw:
                request.raw_input_contents.append(np.asarray(values, np.float32).tobytes())
            else:
                tensor.contents.fp32_contents.extend(values)
        else:
            tensor.name = draw(
                st.one_of(st.sampled_from(["input-0", "features", "extra"]), st.text(max_size=8))
            )
            tensor.datatype = draw(st.one_of(st.sampled_from(DATATYPES), st.text(max_size=8)))
            tensor.shape.extend(draw(st.lists(int64s, max_size=5)))
            if use_raw:
                request.raw_input_contents.append(draw(st.binary(max_size=400)))
            else:
                field = draw(st.sampled_from(list(CONTENTS)))
                getattr(tensor.contents, field).extend(draw(CONTENTS[field]))
    extra = draw(st.sampled_from(["none"] * 4 + ["raw-extra", "outputs", "parameters", "huge", "mixed"]))
    if extra == "raw-extra":
        request.raw_input_contents.append(draw(st.binary(max_size=64)))
    elif extra == "outputs":
        request.outputs.add(name=draw(st.one_of(st.sampled_from(["output-0"]), st.text(max_size=8))))
    elif extra == "parameters":
        request.parameters[draw(st.text(max_size=6))].string_param = draw(st.text(max_size=10))
        request.parameters["content_type"].string_param = draw(st.sampled_from(["np", "pd", "str", "x"]))
    elif extra == "huge":
        request.raw_input_contents.append(b"\0" * draw(st.integers(GRPC_MAX // 2, 2 * GRPC_MAX)))
    elif extra == "mixed" and request.inputs:
        request.inputs[0].contents.fp32_contents.append(1.0)
        request.raw_input_contents.append(b"\0\0\x80?")
    return request, near


@given(case=grpc_request())
@seed(SEED)
@FUZZ
def test_grpc_malformed_infer_requests(
    server: Server,
    models: dict[str, Saved],
    stub: pb_grpc.GRPCInferenceServiceStub,
    case: tuple[pb.ModelInferRequest, bool],
) -> None:
    request, _ = case
    COUNTS["case grpc proto"] += 1
    try:
        reply = stub.ModelInfer(request, timeout=TIMEOUT)
    except grpc.RpcError as err:
        code = err.code()
        COUNTS[f"grpc {code.name}"] += 1
        assert code in CLIENT_CODES, f"{code} for {_clip(request)[:1500]}: {err.details()[:1500]}"
        assert "Traceback" not in (err.details() or "")
    else:
        COUNTS["grpc OK"] += 1
        check_grpc_reply(models, request, reply)
    still_serving(server, models, stub)


def check_grpc_reply(
    models: dict[str, Saved], request: pb.ModelInferRequest, reply: pb.ModelInferResponse
) -> None:
    """An accepted request was valid: its output must be the forward pass of what was sent."""
    arrays = {}
    for i, tensor in enumerate(request.inputs):
        shape = list(tensor.shape)
        dtype = V2_TO_NUMPY[tensor.datatype]
        if request.raw_input_contents:
            array = np.frombuffer(request.raw_input_contents[i], dtype)
        else:
            fields = tensor.contents.ListFields()  # MLServer takes the first contents field set
            array = np.asarray(list(fields[0][1]) if fields else []).astype(dtype)
        arrays[tensor.name] = array.reshape(shape)
    expected = expected_outputs(models, request.model_name, arrays)
    if reply.raw_output_contents:
        got = np.frombuffer(reply.raw_output_contents[0], np.float32)
    else:
        got = np.asarray(reply.outputs[0].contents.fp32_contents, np.float32)
    got = got.reshape(list(reply.outputs[0].shape))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3, equal_nan=True)


@given(body=st.binary(max_size=2000))
@seed(SEED)
@FUZZ
def test_grpc_undecodable_bytes(
    server: Server,
    models: dict[str, Saved],
    channel: grpc.Channel,
    stub: pb_grpc.GRPCInferenceServiceStub,
    body: bytes,
) -> None:
    """Bytes that are not a ModelInferRequest (or decode to an empty or odd one).

    Bytes that are no protobuf at all are refused by grpcio's own deserializer, before MLServer or this
    runtime run, with UNKNOWN ("Unexpected DecodeError"): MLServer registers the deserializer when it
    creates its gRPC server, before any runtime is imported, so that answer is grpcio's. It is allowed
    here for exactly that case; everything that decodes must get a client error.
    """
    COUNTS["case grpc bytes"] += 1
    call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    try:
        call(body, timeout=TIMEOUT)
        COUNTS["grpc bytes OK"] += 1
    except grpc.RpcError as err:
        code, details = err.code(), err.details() or ""
        undecodable = code == grpc.StatusCode.UNKNOWN and "DecodeError" in details
        COUNTS[f"grpc bytes {'undecodable ' if undecodable else ''}{code.name}"] += 1
        assert code in CLIENT_CODES or undecodable, f"{code} for {body!r}: {details[:1500]}"
    still_serving(server, models, stub)


def test_fuzz_ran_enough_cases() -> None:
    """Guards against a strategy that silently stops generating (hypothesis would still pass)."""
    for kind in ("rest json", "rest raw", "grpc proto", "grpc bytes"):
        assert COUNTS[f"case {kind}"] >= min(EXAMPLES, 100) * 0.9, dict(COUNTS)
    assert math.isfinite(sum(COUNTS.values()))
