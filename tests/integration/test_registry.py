"""Model URIs through a real `mlflow server` (sqlite, tests/mlflow_server.py) and a real `mlserver start`.

Three versions of one registered model, one per format (pickle, TorchScript, pt2), each with its own
weights so that an answer tells which version served it. One server serves them by version, alias,
`latest`, run, logged-model id, `mlflow-artifacts:/` and `file:`; the alias moves and a reload through the
repository API serves the new version; unknown names, versions and aliases fail with their message. A
restart reuses the cache with the tracking server gone; S3 artifacts (moto) serve by version and by their
`s3://` location; refused credentials fail the start with a message naming the URI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import mlflow.pytorch
import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from tests import builders as b
from tests.mlflow_server import MlflowServer, client_env
from tests.server import Server, write_model_settings

pytestmark = pytest.mark.timeout(900)

REQUIREMENTS = [f"torch=={torch.__version__.split('+')[0]}"]  # skips MLflow's requirement inference
X = np.random.default_rng(7).random((3, 4), dtype=np.float32)


def seeded(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return b.MLP().eval()


def log_version(name: str, fmt: str, seed: int) -> dict[str, Any]:
    """Log and register one version; returns what the test checks against (model, version, run, source)."""
    model = seeded(seed)
    example = np.random.default_rng(seed).random((4, 4), dtype=np.float32)
    # Traced, not scripted: scripting reads the class's source, which cloudpickle's by-value pickling
    # of tests.builders (an earlier pickle version) leaves unavailable.
    saved: Any = torch.jit.trace(model, torch.from_numpy(example)) if fmt == "torchscript" else model
    with mlflow.start_run() as run:
        info = mlflow.pytorch.log_model(
            saved,
            name="model",
            registered_model_name=name,
            serialization_format="pt2" if fmt == "pt2" else "pickle",
            signature=mlflow.models.infer_signature(example, b.reference(model, example)),
            input_example=example,
            pip_requirements=REQUIREMENTS,
        )
    logged = mlflow.get_logged_model(info.model_id)
    return {
        "model": model,
        "version": str(info.registered_model_version),
        "run_id": run.info.run_id,
        "model_id": info.model_id,
        "artifacts": logged.artifact_location,
    }


def answer(server: Server, name: str) -> np.ndarray:
    body = {
        "inputs": [
            {"name": "input-0", "shape": list(X.shape), "datatype": "FP32", "data": X.ravel().tolist()}
        ]
    }
    status, reply = server.post(f"/v2/models/{name}/infer", body)
    assert status == 200, reply
    out = reply["outputs"][0]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def served_by(server: Server, name: str, versions: dict[str, dict[str, Any]]) -> str:
    """Which version's weights gave the answer: each has its own, so exactly one matches."""
    got = answer(server, name)
    match = [v for v, row in versions.items() if np.allclose(got, b.reference(row["model"], X), atol=1e-5)]
    assert len(match) == 1, (name, match)
    return match[0]


def source(server: Server, name: str) -> dict[str, str]:
    status, meta = server.get(f"/v2/models/{name}")
    assert status == 200, meta
    return {k.removeprefix("torchflow.source."): v for k, v in meta["parameters"].items() if ".source." in k}


@pytest.fixture(scope="module")
def registry(mlflow_server: Any) -> Any:
    server: MlflowServer = mlflow_server()
    with pytest.MonkeyPatch.context() as mp:
        client_env(mp, server)
        versions = {
            "1": log_version("net", "pickle", 1),
            "2": log_version("net", "torchscript", 2),
            "3": log_version("net", "pt2", 3),
        }
        MlflowClient().set_registered_model_alias("net", "champion", "1")
        assert [row["version"] for row in versions.values()] == ["1", "2", "3"]
        yield server, versions


def test_every_kind_of_uri_serves_its_version_and_an_alias_move_reloads(
    registry: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, versions = registry
    local = b.save(seeded(2), tmp_path / "local-v2", "pickle", (X,))
    uris = {
        "by-version": ("models:/net/2", "2"),
        "by-alias": ("models:/net@champion", "1"),
        "latest": ("models:/net/latest", "3"),
        "by-run": (f"runs:/{versions['2']['run_id']}/model", "2"),
        "logged-model": (f"models:/{versions['3']['model_id']}", "3"),
        "proxied-artifacts": (versions["1"]["artifacts"], "1"),
        "file-uri": (local.as_uri(), "2"),
    }
    assert versions["1"]["artifacts"].startswith("mlflow-artifacts:/")
    repo, cache = tmp_path / "repo", tmp_path / "cache"
    for name, (uri, _) in uris.items():
        write_model_settings(repo / name, name, uri)
    env = {**server.env, "MLSERVER_TORCHFLOW_MODEL_CACHE": str(cache)}
    with Server(repo, env=env).running(list(uris)) as mls:
        for name, (uri, version) in uris.items():
            assert served_by(mls, name, versions) == version, name
            facts = source(mls, name)
            if name == "file-uri":
                assert facts == {}, "a local folder is served in place, not fetched"
                continue
            assert facts["uri"] == uri
            assert Path(facts["cache"]).is_relative_to(cache), facts
            if name in ("by-version", "by-alias", "latest"):
                assert facts["version"] == version and facts["resolved"] == f"models:/net/{version}"
                assert facts["run_id"] == versions[version]["run_id"]
            if name == "by-run":
                assert facts["run_id"] == versions["2"]["run_id"] and "version" not in facts
        assert not list(local.parent.glob("local-v2/.partial")), "the model folder was written to"
        assert not (cache / ".partial").exists() or not list((cache / ".partial").iterdir())

        MlflowClient().set_registered_model_alias("net", "champion", "3")
        status, body = mls.post("/v2/repository/models/by-alias/load", {})
        assert status == 200, body
        assert served_by(mls, "by-alias", versions) == "3"
        assert source(mls, "by-alias")["version"] == "3"

        for name, uri, says in [
            ("no-model", "models:/nothing/1", "not found"),
            ("no-version", "models:/net/99", "not found"),
            ("no-alias", "models:/net@nobody", "not found"),
        ]:
            write_model_settings(repo / name, name, uri)
            status, body = mls.post(f"/v2/repository/models/{name}/load", {})
            assert status >= 400, body
            assert uri in body["error"] and f"({says})" in body["error"], body
            assert "Traceback" not in body["error"]
        assert served_by(mls, "by-version", versions) == "2", "a failed load disturbed the others"


def test_a_restart_reuses_the_cache_without_the_tracking_server(mlflow_server: Any, tmp_path: Path) -> None:
    server: MlflowServer = mlflow_server()
    with pytest.MonkeyPatch.context() as mp:
        client_env(mp, server)
        versions = {"1": log_version("cached", "pt2", 11)}
    repo, cache = tmp_path / "repo", tmp_path / "cache"
    write_model_settings(repo / "pinned", "pinned", "models:/cached/1")
    env = {**server.env, "MLSERVER_TORCHFLOW_MODEL_CACHE": str(cache)}
    with Server(repo, env=env).running(["pinned"]) as mls:
        assert source(mls, "pinned")["cached"] == "false"
        assert served_by(mls, "pinned", versions) == "1"
    entries = sorted(p.parent.name for p in cache.rglob("source.json"))
    weights = next(cache.rglob("data/model.pt2"))
    b.flip_member(weights, b.largest(weights))  # bit rot in the cache: evicted and downloaded again
    with Server(repo, env=env).running(["pinned"]) as mls:
        assert served_by(mls, "pinned", versions) == "1"
        assert "the cached copy is damaged" in mls.log()
    assert sorted(p.parent.name for p in cache.rglob("source.json")) == entries
    server.stop()  # the tracking server is gone: the pinned version is served from the cache

    with Server(repo, env=env).running(["pinned"]) as mls:
        assert source(mls, "pinned")["cached"] == "true"
        assert served_by(mls, "pinned", versions) == "1"
    assert sorted(p.parent.name for p in cache.rglob("source.json")) == entries, "downloaded twice"

    write_model_settings(repo / "pinned", "pinned", "models:/cached@champion")  # an alias must ask
    starting = Server(repo, env=env).start()
    try:
        assert starting.proc is not None and starting.proc.wait(timeout=120) != 0
    finally:
        starting.stop()
    assert "'models:/cached@champion' could not be fetched (unreachable)" in starting.log()


def test_s3_artifacts_serve_by_version_and_by_location(mlflow_server: Any, tmp_path: Path) -> None:
    server: MlflowServer = mlflow_server("s3")
    with pytest.MonkeyPatch.context() as mp:
        client_env(mp, server)
        versions = {"1": log_version("on-s3", "pickle", 21), "2": log_version("on-s3", "torchscript", 22)}
    s3_uri = versions["2"]["artifacts"]
    assert s3_uri.startswith("s3://"), s3_uri
    repo = tmp_path / "repo"
    write_model_settings(repo / "v1", "v1", "models:/on-s3/1")
    write_model_settings(repo / "bucket", "bucket", s3_uri)
    env = {**server.env, "MLSERVER_TORCHFLOW_MODEL_CACHE": str(tmp_path / "cache")}
    with Server(repo, env=env).running(["v1", "bucket"]) as mls:
        assert served_by(mls, "v1", versions) == "1"
        assert served_by(mls, "bucket", versions) == "2"
        assert source(mls, "bucket")["resolved"] == s3_uri


@pytest.mark.parametrize("who", ["wrong-password", "denied"])
def test_refused_credentials_fail_the_start_with_the_uri(
    mlflow_server: Any, tmp_path: Path, who: str
) -> None:
    server: MlflowServer = mlflow_server(basic_auth=True)
    with pytest.MonkeyPatch.context() as mp:
        client_env(mp, server)
        log_version("guarded", "pickle", 31)
    server.create_user("reader", "reader-password-0123")
    server.grant("reader", "registered_model", "guarded", "DENY")
    env = (
        server.env_as("admin", "not-the-password")
        if who == "wrong-password"
        else server.env_as("reader", "reader-password-0123")
    )
    repo = tmp_path / "repo"
    write_model_settings(repo / "guarded", "guarded", "models:/guarded/1")
    starting = Server(repo, env={**env, "MLSERVER_TORCHFLOW_MODEL_CACHE": str(tmp_path / "cache")}).start()
    try:
        assert starting.proc is not None and starting.proc.wait(timeout=120) != 0
    finally:
        starting.stop()
    assert "'models:/guarded/1' could not be fetched (permission)" in starting.log(), starting.log()[-3000:]
    assert "MLFLOW_TRACKING_USERNAME" in starting.log()
