"""A real `mlserver start` serving every layout a KServe storage-initializer leaves (canonical, flattened, one level down, sibling leak) in every format, plus the interface features.

One server hosts all models (loading is the slow part); each test talks to it with tritonclient over
HTTP (JSON tensors) and gRPC (raw tensors), or with raw HTTP for the error cases.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests import builders as b
from tests.conftest import Saved
from tests.server import Server, write_model_settings

RTOL, ATOL = 1e-5, 1e-5


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory,
    mlp: dict[str, Saved],
    two_inputs: dict[str, Saved],
    dict_outputs: dict[str, Saved],
    embed: Saved,
    conv: Saved,
    columns: Saved,
    no_signature: Saved,
) -> Iterator[tuple[Server, dict[str, Path]]]:
    stores = tmp_path_factory.mktemp("mnt")
    repo = tmp_path_factory.mktemp("repo")
    uris: dict[str, Path] = {}
    for fmt in b.FORMATS:
        for layout in b.LAYOUTS:
            name = f"mlp-{layout}-{fmt}".replace("_", "-")
            uris[name] = b.make_layout(
                mlp[fmt].path, layout, stores / name, other_model=two_inputs["pickle"].path
            )
    for fmt, saved in two_inputs.items():
        uris[f"two-{fmt}"] = saved.path
    for fmt, saved in dict_outputs.items():
        uris[f"dict-{fmt}"] = saved.path
    uris.update(embed=embed.path, conv=conv.path, columns=columns.path, nosig=no_signature.path)
    before = {n: b.snapshot(u) for n, u in uris.items()}
    for name, uri in uris.items():
        write_model_settings(repo / name, name, uri)
    server = Server(repo).start()
    try:
        server.wait_ready(list(uris))
        yield server, uris
    finally:
        server.stop()
    after = {n: b.snapshot(u) for n, u in uris.items()}
    assert after == before, "serving wrote into a model folder"


@pytest.fixture(scope="module")
def server(served: tuple[Server, dict[str, Path]]) -> Server:
    return served[0]


@pytest.fixture(scope="module")
def http(server: Server) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(server.http)


@pytest.fixture(scope="module")
def grpc(server: Server) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(server.grpc)


def infer(
    client: object, model: str, inputs: dict[str, np.ndarray], outputs: list[str] | None = None
) -> dict:
    """Send named arrays with tritonclient (HTTP as JSON, gRPC as raw bytes); return named arrays."""
    module = httpclient if isinstance(client, httpclient.InferenceServerClient) else grpcclient
    tensors = []
    for name, array in inputs.items():
        tensor = module.InferInput(name, list(array.shape), _v2(array.dtype))
        if module is httpclient:
            tensor.set_data_from_numpy(array, binary_data=False)
        else:
            tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    requested = None
    if outputs is not None:
        requested = [
            httpclient.InferRequestedOutput(o, binary_data=False)
            if module is httpclient
            else grpcclient.InferRequestedOutput(o)
            for o in outputs
        ]
    result = client.infer(model, tensors, outputs=requested)  # type: ignore[attr-defined]
    response = result.get_response()
    names = (
        [o["name"] for o in response["outputs"]]
        if isinstance(response, dict)
        else [o.name for o in response.outputs]
    )
    return {n: result.as_numpy(n) for n in names}


def _v2(dtype: np.dtype) -> str:
    return {"float32": "FP32", "float64": "FP64", "int64": "INT64", "int32": "INT32", "float16": "FP16"}[
        str(dtype)
    ]


CLIENTS = ["http", "grpc"]


@pytest.mark.parametrize("transport", CLIENTS)
@pytest.mark.parametrize("layout", b.LAYOUTS)
@pytest.mark.parametrize("fmt", b.FORMATS)
def test_every_layout_and_format_predicts(
    request: pytest.FixtureRequest, transport: str, layout: str, fmt: str, mlp: dict[str, Saved]
) -> None:
    client = request.getfixturevalue(transport)
    x = np.random.default_rng(7).random((5, 4), dtype=np.float32)
    got = infer(client, f"mlp-{layout}-{fmt}".replace("_", "-"), {"input-0": x})
    assert list(got) == ["output-0"]
    np.testing.assert_allclose(got["output-0"], mlp[fmt].expected(x), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("transport", CLIENTS)
def test_metadata_names_equal_response_names(request: pytest.FixtureRequest, transport: str) -> None:
    client = request.getfixturevalue(transport)
    for model, inputs in {
        "mlp-canonical-pt2": {"input-0": np.ones((1, 4), np.float32)},
        "dict-pickle": {"x": np.ones((1, 4), np.float32)},
        "two-pt2": {"features": np.ones((1, 4), np.float32), "extra": np.ones((1, 2), np.float32)},
    }.items():
        meta = client.get_model_metadata(model)
        meta_inputs = (
            [i["name"] for i in meta["inputs"]] if transport == "http" else [i.name for i in meta.inputs]
        )
        meta_outputs = (
            [o["name"] for o in meta["outputs"]] if transport == "http" else [o.name for o in meta.outputs]
        )
        assert meta_inputs == list(inputs)
        assert list(infer(client, model, inputs)) == meta_outputs


def test_metadata_reports_format_device_and_versions(server: Server) -> None:
    status, meta = server.get("/v2/models/mlp-canonical-pt2")
    assert status == 200
    assert meta["inputs"] == [{"name": "input-0", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["outputs"] == [{"name": "output-0", "datatype": "FP32", "shape": [-1, 3]}]
    params = meta["parameters"]
    assert params["torchflow.format"] == "pt2"
    assert params["torchflow.device"] == "cpu"
    assert params["torchflow.version.torch"].endswith("(ok)")
    assert (
        server.get("/v2/models/mlp-canonical-torchscript")[1]["parameters"]["torchflow.format"]
        == "torchscript"
    )
    assert server.get("/v2/models/mlp-canonical-pickle")[1]["parameters"]["torchflow.format"] == "pickle"


@pytest.mark.parametrize("transport", CLIENTS)
@pytest.mark.parametrize("fmt", ["pickle", "pt2"])
def test_two_named_inputs_in_signature_order(
    request: pytest.FixtureRequest, transport: str, fmt: str, two_inputs: dict[str, Saved]
) -> None:
    client = request.getfixturevalue(transport)
    rng = np.random.default_rng(3)
    features, extra = rng.random((3, 4), dtype=np.float32), rng.random((3, 2), dtype=np.float32)
    # Sent in the opposite order of the signature: matched by name, not position.
    got = infer(client, f"two-{fmt}", {"extra": extra, "features": features})
    np.testing.assert_allclose(got["score"], two_inputs[fmt].expected(features, extra), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("transport", CLIENTS)
@pytest.mark.parametrize("fmt", ["pickle", "pt2"])
def test_dict_outputs_become_named_outputs(
    request: pytest.FixtureRequest, transport: str, fmt: str, dict_outputs: dict[str, Saved]
) -> None:
    client = request.getfixturevalue(transport)
    x = np.random.default_rng(4).random((4, 4), dtype=np.float32)
    got = infer(client, f"dict-{fmt}", {"x": x})
    expected = dict_outputs[fmt].expected(x)
    assert sorted(got) == sorted(expected) == ["label", "logits", "probs"]
    for name, value in expected.items():
        assert got[name].dtype == value.dtype
        np.testing.assert_allclose(got[name], value, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("transport", CLIENTS)
def test_requested_outputs_only(request: pytest.FixtureRequest, transport: str) -> None:
    client = request.getfixturevalue(transport)
    got = infer(client, "dict-pickle", {"x": np.ones((2, 4), np.float32)}, outputs=["probs"])
    assert list(got) == ["probs"]
    np.testing.assert_allclose(got["probs"].sum(axis=1), [1.0, 1.0], rtol=1e-5)


@pytest.mark.parametrize("transport", CLIENTS)
def test_int64_input(request: pytest.FixtureRequest, transport: str, embed: Saved) -> None:
    client = request.getfixturevalue(transport)
    ids = np.random.default_rng(5).integers(0, 50, (3, 5), dtype=np.int64)
    got = infer(client, "embed", {"input-0": ids})
    np.testing.assert_allclose(got["output-0"], embed.expected(ids), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("transport", CLIENTS)
def test_4d_image_input(request: pytest.FixtureRequest, transport: str, conv: Saved) -> None:
    client = request.getfixturevalue(transport)
    image = np.random.default_rng(6).random((2, 3, 8, 8), dtype=np.float32)
    got = infer(client, "conv", {"input-0": image})
    assert got["output-0"].shape == (2, 5)
    np.testing.assert_allclose(got["output-0"], conv.expected(image), rtol=RTOL, atol=ATOL)


def test_column_signature_stacks_columns(server: Server, columns: Saved) -> None:
    status, meta = server.get("/v2/models/columns")
    assert [i["name"] for i in meta["inputs"]] == ["a", "b", "c", "d"]
    x = np.random.default_rng(8).random((3, 4))
    body = {
        "inputs": [
            {"name": c, "datatype": "FP64", "shape": [3], "data": x[:, i].tolist()}
            for i, c in enumerate("dbca")
        ]
    }
    # sent as d, b, c, a: stacked by name in signature order (a, b, c, d), not in request order
    status, reply = server.post("/v2/models/columns/infer", body)
    assert status == 200, reply
    expected = columns.expected(x[:, [3, 1, 2, 0]].astype(np.float32))
    got = np.asarray(reply["outputs"][0]["data"], np.float32).reshape(reply["outputs"][0]["shape"])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_no_signature_takes_any_single_tensor(server: Server, no_signature: Saved) -> None:
    x = np.random.default_rng(9).random((2, 4))
    body = {"inputs": [{"name": "whatever", "datatype": "FP64", "shape": [2, 4], "data": x.ravel().tolist()}]}
    status, reply = server.post("/v2/models/nosig/infer", body)
    assert status == 200, reply
    assert reply["outputs"][0]["name"] == "output-0"
    got = np.asarray(reply["outputs"][0]["data"]).reshape(2, 3)
    np.testing.assert_allclose(got, no_signature.expected(x.astype(np.float32)), rtol=1e-5, atol=1e-5)


def test_fp64_to_fp32_model_is_cast(server: Server, mlp: dict[str, Saved]) -> None:
    x = np.random.default_rng(10).random((2, 4))
    body = {"inputs": [{"name": "input-0", "datatype": "FP64", "shape": [2, 4], "data": x.tolist()}]}
    status, reply = server.post("/v2/models/mlp-canonical-pt2/infer", body)
    assert status == 200, reply
    assert reply["outputs"][0]["datatype"] == "FP32"
    got = np.asarray(reply["outputs"][0]["data"]).reshape(2, 3)
    np.testing.assert_allclose(got, mlp["pt2"].expected(x.astype(np.float32)), rtol=1e-5, atol=1e-5)


def _tensor(**fields: object) -> dict:
    base: dict = {"name": "input-0", "datatype": "FP32", "shape": [2, 4], "data": list(range(8))}
    base.update(fields)
    return base


INVALID = {
    "unknown name": ({"inputs": [_tensor(name="x")]}, ["'x'", "input-0"]),
    "missing input": ({"inputs": [{**_tensor(name="features", shape=[1, 4], data=[1, 2, 3, 4])}]}, ["extra"]),
    "duplicated name": ({"inputs": [_tensor(), _tensor()]}, ["more than once"]),
    "wrong datatype": ({"inputs": [_tensor(datatype="INT64")]}, ["FP32", "INT64"]),
    "unsupported datatype": ({"inputs": [_tensor(datatype="BYTES", data=["a"] * 8)]}, ["BYTES"]),
    "wrong rank": ({"inputs": [_tensor(shape=[8])]}, ["[-1, 4]", "[8]"]),
    "wrong fixed dim": ({"inputs": [_tensor(shape=[4, 2])]}, ["[-1, 4]", "[4, 2]"]),
    "too little data": ({"inputs": [_tensor(data=[1, 2, 3])]}, ["8 values", "3"]),
    "too much data": ({"inputs": [_tensor(data=list(range(12)))]}, ["8 values", "12"]),
    "negative dim": ({"inputs": [_tensor(shape=[-2, 4])]}, ["negative"]),
    "strings as numbers": ({"inputs": [_tensor(data=["a"] * 8)]}, ["numbers"]),
    "ragged nesting": ({"inputs": [_tensor(data=[[1, 2, 3, 4], [5, 6]])]}, ["input-0"]),
    "unknown output": ({"inputs": [_tensor()], "outputs": [{"name": "nope"}]}, ["nope", "output-0"]),
    # The pt2 program shares one batch size between its inputs: a 400 before the model, not its
    # `Guard failed` as a 500.
    "rows that must match": (
        {
            "inputs": [
                _tensor(name="features", shape=[3, 4], data=list(range(12))),
                _tensor(name="extra", shape=[2, 2], data=[1, 2, 3, 4]),
            ]
        },
        ["inputs 'features' and 'extra'", "must be equal"],
    ),
}
TWO_INPUT_CASES = ("missing input", "rows that must match")


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_input_is_a_clear_400(server: Server, case: str) -> None:
    body, must_contain = INVALID[case]
    model = "two-pt2" if case in TWO_INPUT_CASES else "mlp-canonical-pt2"
    status, reply = server.post(f"/v2/models/{model}/infer", body)
    assert status == 400, reply
    assert set(reply) == {"error"}
    for text in must_contain:
        assert text in reply["error"], reply["error"]
    assert "Traceback" not in reply["error"]


def test_int_range_and_float_into_int_are_refused(server: Server) -> None:
    overflow = {
        "inputs": [{"name": "input-0", "datatype": "INT64", "shape": [1, 5], "data": [1, 2, 3, 4, 2**70]}]
    }
    fractional = {
        "inputs": [{"name": "input-0", "datatype": "INT64", "shape": [1, 5], "data": [1, 2, 3, 4, 2.5]}]
    }
    for body in (overflow, fractional):
        status, reply = server.post("/v2/models/embed/infer", body)
        assert status == 400 and "input-0" in reply["error"], reply


def test_grpc_invalid_inputs_are_invalid_argument(grpc: grpcclient.InferenceServerClient) -> None:
    import grpc as grpclib

    def check(inputs: list[grpcclient.InferInput], *texts: str) -> None:
        with pytest.raises(InferenceServerException) as info:
            grpc.infer("mlp-canonical-pt2", inputs)
        assert info.value.status() == str(grpclib.StatusCode.INVALID_ARGUMENT)
        for text in texts:
            assert text in info.value.message()

    wrong_shape = grpcclient.InferInput("input-0", [2, 3], "FP32")
    wrong_shape.set_data_from_numpy(np.ones((2, 3), np.float32))
    check([wrong_shape], "[-1, 4]", "[2, 3]")

    wrong_type = grpcclient.InferInput("input-0", [2, 4], "INT64")
    wrong_type.set_data_from_numpy(np.ones((2, 4), np.int64))
    check([wrong_type], "INT64")

    short_raw = grpcclient.InferInput("input-0", [3, 4], "FP32")
    short_raw.set_data_from_numpy(np.ones((3, 4), np.float32))
    short_raw._raw_content = short_raw._raw_content[:-4]  # a client bug: one value short
    check([short_raw], "raw_input_contents", "44 bytes")

    features, extra = (
        grpcclient.InferInput("features", [3, 4], "FP32"),
        grpcclient.InferInput("extra", [2, 2], "FP32"),
    )
    features.set_data_from_numpy(np.ones((3, 4), np.float32))
    extra.set_data_from_numpy(np.ones((2, 2), np.float32))
    with pytest.raises(InferenceServerException) as info:
        grpc.infer("two-pt2", [features, extra])
    assert info.value.status() == str(grpclib.StatusCode.INVALID_ARGUMENT), info.value
    assert "inputs 'features' and 'extra'" in info.value.message() and "must be equal" in info.value.message()


def test_model_error_is_a_one_line_500_and_server_keeps_serving(server: Server) -> None:
    # the exported graph was traced for 4 features; [2, 5] passes no signature check (nosig model)
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 5], "data": list(range(10))}]}
    status, reply = server.post("/v2/models/nosig/infer", body)
    assert status == 500
    assert set(reply) == {"error"}
    assert "nosig" in reply["error"] and "\n" not in reply["error"] and "Traceback" not in reply["error"]
    assert "Traceback" in server.log()  # ...but the operator gets it
    ok = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    assert server.post("/v2/models/nosig/infer", ok)[0] == 200
