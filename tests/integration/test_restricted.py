"""Restricted APIs behind a real `mlserver start`, with the real clients: the model repository and statistics
need the operator's header over REST and gRPC (MLServer's own repository service included), refusals are
403 / PERMISSION_DENIED saying what to send, and inference, config and health stay open."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.conftest import Saved
from tests.server import Server, write_model_settings

KEY, SECRET = "x-admin-key", "s3cret"
ADMIN = {KEY: SECRET}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, mlp: dict[str, Saved]) -> Iterator[Server]:
    repo = tmp_path_factory.mktemp("repo")
    write_model_settings(repo / "mlp", "mlp", mlp["pickle"].path)
    env = {
        "MLSERVER_TORCHFLOW_RESTRICTED_APIS": "model-repository, statistics",
        "MLSERVER_TORCHFLOW_RESTRICTED_HEADER": f"{KEY}={SECRET}",
    }
    with Server(repo, env=env).running(["mlp"]) as running:
        yield running


def _infer(client: object, module: object) -> np.ndarray:
    x = np.ones((1, 4), dtype=np.float32)
    tensor = module.InferInput("input-0", [1, 4], "FP32")  # type: ignore[attr-defined]
    tensor.set_data_from_numpy(x)
    return client.infer("mlp", [tensor]).as_numpy("output-0")  # type: ignore[attr-defined,no-any-return]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_repository_and_statistics_need_the_header(server: Server, protocol: str) -> None:
    module = httpclient if protocol == "http" else grpcclient
    client = module.InferenceServerClient(server.http if protocol == "http" else server.grpc)
    refusals = [
        lambda **kw: client.unload_model("mlp", **kw),
        lambda **kw: client.get_model_repository_index(**kw),
        lambda **kw: client.get_inference_statistics("mlp", **kw),
    ]
    for call in refusals:
        for headers in (None, {KEY: "wrong"}):
            with pytest.raises(InferenceServerException) as err:
                call(headers=headers)
            text = f"{err.value.status()} {err.value.message()}"
            assert ("403" in text or "PERMISSION_DENIED" in text) and KEY in text and SECRET not in text, text
    assert client.is_model_ready("mlp")  # nothing was unloaded
    assert _infer(client, module).shape == (1, 3)
    assert client.get_model_config("mlp")  # config stays open
    assert client.get_inference_statistics("mlp", headers=ADMIN)
    index = client.get_model_repository_index(headers=ADMIN)
    assert "mlp" in str(index)
    client.unload_model("mlp", headers=ADMIN)
    assert not client.is_model_ready("mlp")
    client.load_model("mlp", headers=ADMIN)
    assert client.is_model_ready("mlp")


def test_mlservers_own_grpc_repository_service_is_guarded_too(server: Server) -> None:
    with grpc.insecure_channel(server.grpc) as channel:
        unload = channel.unary_unary(
            "/inference.model_repository.ModelRepositoryService/RepositoryModelUnload"
        )
        with pytest.raises(grpc.RpcError) as err:
            unload(b"\x12\x03mlp")  # model_name = "mlp"
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, err.value
    status, body = server.get("/v2/models/mlp/ready")
    assert status == 200, body


def test_rest_refusal_is_a_403_with_an_error_body(server: Server) -> None:
    status, body = server.post("/v2/repository/models/mlp/unload", {})
    assert status == 403 and KEY in body["error"] and "MLSERVER_TORCHFLOW_RESTRICTED_APIS" in body["error"], (
        body
    )
    status, body = server.get("/v2/models/stats")
    assert status == 403, body
    assert server.get("/v2/health/ready") == (200, {"ready": True})
