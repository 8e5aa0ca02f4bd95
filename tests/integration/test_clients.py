"""The real clients with their DEFAULT settings against a real `mlserver start`: tritonclient HTTP (binary
tensors both ways) and gRPC, KServe's Python SDK over REST (binary and JSON tensors) and gRPC, and
perf_analyzer over HTTP and gRPC, on every model type (one input, several inputs, dict outputs, INT64
ids, 4-D images). Also Triton's model configuration, statistics and repository calls as tritonclient
makes them, and the health bodies KServe's SDK parses.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.client_envs import require_perf_analyzer, require_sdk_python, subprocess_env
from tests.conftest import Saved
from tests.server import Server, write_model_settings

RTOL, ATOL = 1e-5, 1e-5
SDK_SCRIPT = Path(__file__).with_name("sdk_client.py")


@pytest.fixture(scope="module")
def models(
    mlp: dict[str, Saved],
    two_inputs: dict[str, Saved],
    dict_outputs: dict[str, Saved],
    embed: Saved,
    conv: Saved,
) -> dict[str, Saved]:
    return {
        "mlp": mlp["pickle"],
        "two": two_inputs["pt2"],
        "dict": dict_outputs["pickle"],
        "embed": embed,
        "conv": conv,
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, models: dict[str, Saved]) -> Iterator[Server]:
    repo = tmp_path_factory.mktemp("repo")
    for name, saved in models.items():
        batching = {"max_batch_size": 16, "max_batch_time": 0.002} if name == "mlp" else None
        write_model_settings(repo / name, name, saved.path, mlserver=batching)
    with Server(repo).running(list(models)) as running:
        yield running


def inputs_of(server: Server, model: str, saved: Saved, rows: int = 3) -> dict[str, np.ndarray]:
    """Fresh inputs shaped as the model's metadata says, `rows` rows, from a fixed seed."""
    status, meta = server.get(f"/v2/models/{model}")
    assert status == 200, meta
    rng = np.random.default_rng(7)
    out = {}
    for spec, example in zip(meta["inputs"], saved.example, strict=True):
        shape = (rows, *example.shape[1:])
        if example.dtype.kind in "iu":
            out[spec["name"]] = rng.integers(0, 50, size=shape).astype(example.dtype)
        else:
            out[spec["name"]] = rng.random(shape).astype(example.dtype)
    return out


def named_outputs(
    server: Server, model: str, saved: Saved, inputs: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The reference outputs under the names the server's metadata gives them."""
    names = [o["name"] for o in server.get(f"/v2/models/{model}")[1]["outputs"]]
    ref = saved.expected(*inputs.values())
    values = list(ref.values()) if isinstance(ref, dict) else [ref]
    return {n: np.asarray(v) for n, v in zip(names, values, strict=True)}


@pytest.mark.parametrize("model", ["mlp", "two", "dict", "embed", "conv"])
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_tritonclient_with_its_defaults(
    server: Server, models: dict[str, Saved], model: str, protocol: str
) -> None:
    """`set_data_from_numpy(x)` and no requested outputs: binary tensors both ways over HTTP."""
    module: Any = httpclient if protocol == "http" else grpcclient
    client = module.InferenceServerClient(server.http if protocol == "http" else server.grpc)
    inputs = inputs_of(server, model, models[model])
    tensors = []
    for name, array in inputs.items():
        tensor = module.InferInput(name, list(array.shape), "INT64" if array.dtype.kind == "i" else "FP32")
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    result = client.infer(model, tensors)
    want = named_outputs(server, model, models[model], inputs)
    if protocol == "http":  # every output came back as binary data, as tritonclient asked
        sent = result.get_response()["outputs"]
        assert all("data" not in o and o["parameters"]["binary_data_size"] > 0 for o in sent), sent
    for name, value in want.items():
        got = result.as_numpy(name)
        assert got.dtype == value.dtype, name
        np.testing.assert_allclose(got, value, rtol=RTOL, atol=ATOL, err_msg=name)


def test_http_outputs_binary_or_json_as_each_asks(server: Server, models: dict[str, Saved]) -> None:
    client = httpclient.InferenceServerClient(server.http)
    inputs = inputs_of(server, "dict", models["dict"])
    ((name, x),) = inputs.items()
    tensor = httpclient.InferInput(name, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=False)  # JSON in
    outputs = [
        httpclient.InferRequestedOutput("probs", binary_data=True),
        httpclient.InferRequestedOutput("label", binary_data=False),
    ]
    result = client.infer("dict", [tensor], outputs=outputs)
    sent = {o["name"]: o for o in result.get_response()["outputs"]}
    assert set(sent) == {"probs", "label"}
    assert "data" not in sent["probs"] and sent["probs"]["parameters"]["binary_data_size"] == 3 * 3 * 4
    assert sent["label"]["data"] and "binary_data_size" not in (sent["label"].get("parameters") or {})
    want = named_outputs(server, "dict", models["dict"], inputs)
    np.testing.assert_allclose(result.as_numpy("probs"), want["probs"], rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(result.as_numpy("label"), want["label"])


def test_json_request_gets_a_json_answer(server: Server, models: dict[str, Saved]) -> None:
    inputs = inputs_of(server, "mlp", models["mlp"])
    ((name, x),) = inputs.items()
    body = {
        "inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]
    }
    status, answer = server.post("/v2/models/mlp/infer", body)
    assert status == 200, answer
    (out,) = answer["outputs"]
    want = named_outputs(server, "mlp", models["mlp"], inputs)["output-0"]
    np.testing.assert_allclose(np.asarray(out["data"]).reshape(out["shape"]), want, rtol=RTOL, atol=ATOL)


def test_health_bodies_keep_mlserver_status_codes(server: Server) -> None:
    assert server.get("/v2/health/live") == (200, {"live": True})
    assert server.get("/v2/health/ready") == (200, {"ready": True})
    assert server.get("/v2/models/mlp/ready") == (200, {"name": "mlp", "ready": True})
    assert server.get("/v2/models/mlp/versions/1/ready")[0] == 404
    status, body = server.get("/v2/models/nope/ready")
    assert status == 404 and "nope" in body["error"]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_model_config_as_triton_reports_it(server: Server, protocol: str) -> None:
    if protocol == "http":
        config = httpclient.InferenceServerClient(server.http).get_model_config("mlp")
    else:
        config = grpcclient.InferenceServerClient(server.grpc).get_model_config("mlp", as_json=True)["config"]
    assert config["name"] == "mlp"
    assert int(config["max_batch_size"]) == 16
    assert [(i["name"], i["data_type"], [int(d) for d in i["dims"]]) for i in config["input"]] == [
        ("input-0", "TYPE_FP32", [4])
    ]
    assert int(config["dynamic_batching"]["max_queue_delay_microseconds"]) == 2000
    two = httpclient.InferenceServerClient(server.http).get_model_config("two")
    assert [i["name"] for i in two["input"]] == ["features", "extra"]


def _stats(server: Server, protocol: str, model: str) -> dict[str, Any]:
    if protocol == "http":
        (entry,) = httpclient.InferenceServerClient(server.http).get_inference_statistics(model)[
            "model_stats"
        ]
        return dict(entry)
    response = grpcclient.InferenceServerClient(server.grpc).get_inference_statistics(model, as_json=True)
    (entry,) = response["model_stats"]
    return dict(entry)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_statistics_count_what_ran(server: Server, models: dict[str, Saved], protocol: str) -> None:
    before = _stats(server, protocol, "conv")
    client = httpclient.InferenceServerClient(server.http)
    ((name, x),) = inputs_of(server, "conv", models["conv"], rows=2).items()
    tensor = httpclient.InferInput(name, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    for _ in range(3):
        client.infer("conv", [tensor])
    after = _stats(server, protocol, "conv")
    success = after["inference_stats"]["success"]
    assert int(success["count"]) - int(before["inference_stats"].get("success", {}).get("count", 0)) == 3
    assert int(after["inference_count"]) - int(before.get("inference_count", 0)) == 6  # rows
    for phase in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert int(after["inference_stats"][phase]["count"]) >= 3, phase
    assert int(after["inference_stats"]["compute_infer"]["ns"]) > 0
    sizes = {int(b["batch_size"]) for b in after["batch_stats"]}
    assert 2 in sizes
    assert int(after["last_inference"]) > 0


def test_statistics_of_every_model_and_unknown_ones(server: Server) -> None:
    status, body = server.get("/v2/models/stats")
    assert status == 200
    assert {"mlp", "two", "dict", "embed", "conv"} <= {s["name"] for s in body["model_stats"]}
    status, body = server.get("/v2/models/nope/stats")
    assert status == 404 and "nope" in body["error"]
    with pytest.raises(Exception, match="nope"):
        grpcclient.InferenceServerClient(server.grpc).get_inference_statistics("nope")


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_repository_calls_as_tritonclient_makes_them(
    server: Server, models: dict[str, Saved], protocol: str
) -> None:
    module: Any = httpclient if protocol == "http" else grpcclient
    client = module.InferenceServerClient(server.http if protocol == "http" else server.grpc)
    index = (
        client.get_model_repository_index()
        if protocol == "http"
        else client.get_model_repository_index(as_json=True)["models"]
    )
    states = {m["name"]: m.get("state") for m in index}
    assert states["embed"] == "READY", states
    client.unload_model("embed")
    assert not client.is_model_ready("embed")
    index = (
        client.get_model_repository_index()
        if protocol == "http"
        else client.get_model_repository_index(as_json=True)["models"]
    )
    assert {m["name"]: m.get("state") for m in index}["embed"] == "UNAVAILABLE"
    client.load_model("embed")
    assert client.is_model_ready("embed")
    ids = np.arange(5, dtype=np.int64).reshape(1, 5)
    tensor = module.InferInput("input-0", [1, 5], "INT64")
    tensor.set_data_from_numpy(ids)
    got = client.infer("embed", [tensor]).as_numpy("output-0")
    np.testing.assert_allclose(got, models["embed"].expected(ids), rtol=RTOL, atol=ATOL)


def _sdk(server: Server, cases: list[dict[str, Any]]) -> dict[str, Any]:
    python = require_sdk_python()
    done = subprocess.run(
        [str(python), str(SDK_SCRIPT), server.http, server.grpc],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        timeout=300,
        env=subprocess_env(),
        cwd="/",
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_kserve_sdk_rest_and_grpc(server: Server, models: dict[str, Saved]) -> None:
    cases = []
    wants = {}
    for model, saved in models.items():
        inputs = inputs_of(server, model, saved)
        wants[model] = named_outputs(server, model, saved, inputs)
        cases.append(
            {
                "model": model,
                "inputs": {n: {"data": a.tolist(), "dtype": str(a.dtype)} for n, a in inputs.items()},
            }
        )
    report = _sdk(server, cases)
    for transport in ("rest-binary", "rest-json", "grpc"):
        health = report[transport]["health"]
        assert health == {"live": True, "ready": True, **{f"model:{m}": True for m in models}}, (
            transport,
            health,
        )
        for model, want in wants.items():
            got = report[transport]["outputs"][model]
            assert set(got) == set(want), (transport, model, got.keys())
            for name, value in want.items():
                array = np.asarray(got[name]["data"], dtype=got[name]["dtype"])
                assert array.dtype == value.dtype, (transport, model, name)
                np.testing.assert_allclose(
                    array, value, rtol=RTOL, atol=ATOL, err_msg=f"{transport} {model} {name}"
                )


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_perf_analyzer_with_its_defaults_reports_server_times(server: Server, protocol: str) -> None:
    pa = require_perf_analyzer()
    address = server.http if protocol == "http" else server.grpc
    done = subprocess.run(
        [
            str(pa),
            "-m",
            "mlp",
            "-u",
            address,
            "-i",
            protocol,
            "--measurement-interval",
            "1500",
            "--concurrency-range",
            "2",
            "--stability-percentage",
            "100",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=subprocess_env(),
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert "Server:" in out and "Successful request count" in out, out[-4000:]
    assert re.search(r"queue \d+ usec \+ compute input \d+ usec \+ compute infer [1-9]\d* usec", out), out[
        -4000:
    ]
    assert "Throughput:" in out
    status, meta = server.get("/v2")
    assert status == 200, meta
    assert {"binary_tensor_data", "statistics", "model_configuration"} <= set(meta["extensions"])


def test_parallel_workers_answer_binary_config_and_stats(tmp_path: Path, mlp: dict[str, Saved]) -> None:
    """With `parallel_workers: 1` the model lives in a worker: binary inputs travel there as bytes, and the
    config and statistics are fetched from the worker by MLServer's custom-handler proxy."""
    write_model_settings(tmp_path / "mlp", "mlp", mlp["pickle"].path)
    with Server(tmp_path, parallel_workers=1).running(["mlp"]) as running:
        client = httpclient.InferenceServerClient(running.http)
        x = np.random.default_rng(3).random((2, 4), dtype=np.float32)
        tensor = httpclient.InferInput("input-0", [2, 4], "FP32")
        tensor.set_data_from_numpy(x)
        got = client.infer("mlp", [tensor]).as_numpy("output-0")
        np.testing.assert_allclose(got, mlp["pickle"].expected(x), rtol=RTOL, atol=ATOL)
        assert client.get_model_config("mlp")["input"][0]["name"] == "input-0"
        (stats,) = client.get_inference_statistics("mlp")["model_stats"]
        assert stats["inference_stats"]["success"]["count"] == 1 and stats["inference_count"] == 2
        grpc_stats = grpcclient.InferenceServerClient(running.grpc).get_inference_statistics(
            "mlp", as_json=True
        )
        assert grpc_stats["model_stats"][0]["inference_count"] == "2"
