"""tests/mlflow_server.py runs a real `mlflow server` in each of its modes, and this process's mlflow-skinny
uses it as a user would: log a tiny torch model with `registered_model_name=`, give version 1 an alias,
resolve the alias and download `models:/<name>@<alias>`.

- proxied artifacts: the files really land in the server's `--artifacts-destination`;
- S3 artifacts: the files really are objects in the moto bucket, and the client got an `s3://` location;
- basic auth: a wrong password is refused (401), a user with a DENY grant on the model is refused
  (PERMISSION_DENIED) while a user who only has the default READ can read it.

The downloaded model must load and answer like the model that was logged.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import mlflow.artifacts
import mlflow.pytorch
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from torch import nn

from tests import builders as b
from tests import s3 as s3_helpers
from tests.mlflow_server import ADMIN_PASSWORD, ADMIN_USERNAME, S3_PREFIX, MlflowServer, client_env

# The first test may build the mlflow-server virtualenv (minutes on a fresh machine).
pytestmark = pytest.mark.timeout(900)

NAME = "tiny-mlp"
ALIAS = "champion"
# Pinned requirements skip MLflow's inference, which reloads the model in a subprocess (~10 s).
REQUIREMENTS = [f"torch=={torch.__version__.split('+')[0]}"]


def log_and_alias(name: str = NAME) -> tuple[nn.Module, str]:
    """Log the seeded MLP as version 1 of `name` (pickle: fast), alias it; returns it and its artifact root."""
    model = b.build(b.MLP)
    with mlflow.start_run():
        info = mlflow.pytorch.log_model(
            model,
            name="model",
            registered_model_name=name,
            serialization_format="pickle",
            pip_requirements=REQUIREMENTS,
        )
    assert str(info.registered_model_version) == "1"  # a string in mlflow 3.18
    MlflowClient().set_registered_model_alias(name, ALIAS, "1")
    return model, mlflow.get_logged_model(info.model_id).artifact_location


def check_alias_and_download(model: nn.Module, dest: Path, name: str = NAME) -> Path:
    """The alias resolves to version 1 and its download is the logged model; returns the folder."""
    version = MlflowClient().get_model_version_by_alias(name, ALIAS)
    assert version.version == "1"
    assert version.aliases == [ALIAS]
    folder = Path(mlflow.artifacts.download_artifacts(f"models:/{name}@{ALIAS}", dst_path=str(dest)))
    assert (folder / "MLmodel").is_file(), sorted(p.name for p in folder.iterdir())
    assert (folder / "data" / "model.pth").is_file()
    loaded = mlflow.pytorch.load_model(str(folder))
    x = np.random.default_rng(3).random((5, 4), dtype=np.float32)
    np.testing.assert_allclose(b.reference(loaded, x), b.reference(model, x), rtol=1e-6, atol=1e-6)
    return folder


def test_proxied_artifacts_land_in_the_destination(
    mlflow_server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    server: MlflowServer = mlflow_server()
    client_env(monkeypatch, server)
    assert mlflow.get_tracking_uri() == server.uri
    model, location = log_and_alias()
    assert location.startswith("mlflow-artifacts:/"), location
    check_alias_and_download(model, tmp_path / "download")
    assert server.artifacts_destination is not None
    on_disk = [p.relative_to(server.artifacts_destination) for p in server.artifacts_destination.rglob("*")]
    assert any(p.name == "MLmodel" for p in on_disk), on_disk
    assert any(p.parts[-2:] == ("data", "model.pth") for p in on_disk), on_disk


def test_s3_artifacts_are_objects_in_the_bucket(
    mlflow_server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    server: MlflowServer = mlflow_server("s3")
    client_env(monkeypatch, server)
    model, location = log_and_alias()
    assert location.startswith(f"s3://{server.bucket}/{S3_PREFIX}/"), location
    check_alias_and_download(model, tmp_path / "download")
    assert server.s3_endpoint is not None
    listed = s3_helpers.client(server.s3_endpoint).list_objects_v2(Bucket=server.bucket, Prefix=S3_PREFIX)
    keys = [o["Key"] for o in listed.get("Contents", [])]
    prefix = location.removeprefix(f"s3://{server.bucket}/")
    assert f"{prefix}/MLmodel" in keys, keys
    assert f"{prefix}/data/model.pth" in keys, keys
    assert not (server.root / "artifacts").exists(), "s3 mode wrote artifacts to the server's disk"


def test_basic_auth_refuses_a_wrong_password_and_a_denied_user(
    mlflow_server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    server: MlflowServer = mlflow_server(basic_auth=True)
    client_env(monkeypatch, server)  # as the admin
    model, _ = log_and_alias()
    check_alias_and_download(model, tmp_path / "admin")
    server.create_user("reader", "reader-password-1")
    server.create_user("denied", "denied-password-1")
    server.grant("denied", "registered_model", NAME, "DENY")

    client_env(monkeypatch, server, ADMIN_USERNAME, ADMIN_PASSWORD + "-wrong")
    with pytest.raises(MlflowException) as wrong:
        MlflowClient().get_model_version_by_alias(NAME, ALIAS)
    assert wrong.value.error_code == "UNAUTHENTICATED", wrong.value
    assert wrong.value.get_http_status_code() == 401, wrong.value

    client_env(monkeypatch, server, "denied", "denied-password-1")
    with pytest.raises(MlflowException) as denied:
        MlflowClient().get_model_version_by_alias(NAME, ALIAS)
    assert denied.value.error_code == "PERMISSION_DENIED", denied.value
    assert denied.value.get_http_status_code() == 403, denied.value
    with pytest.raises(MlflowException) as denied_download:
        mlflow.artifacts.download_artifacts(f"models:/{NAME}@{ALIAS}", dst_path=str(tmp_path / "denied"))
    assert denied_download.value.error_code == "PERMISSION_DENIED", denied_download.value

    client_env(monkeypatch, server, "reader", "reader-password-1")  # default_permission READ
    check_alias_and_download(model, tmp_path / "reader")
