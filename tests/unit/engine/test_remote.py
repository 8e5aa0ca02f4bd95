"""Remote model URIs (engine/remote.py): the child is killed at its timeout and leaves nothing behind,
an unreachable server fails fast with its own message, a read-only cache is named, and MLflow's, boto's
and requests' errors are told apart. Real child processes and sockets; the registry itself is exercised
against a real `mlflow server` in tests/integration/test_registry.py."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import PERMISSION_DENIED, RESOURCE_DOES_NOT_EXIST

from mlserver_torchflow.engine import remote_worker
from mlserver_torchflow.engine.remote import fetch, is_remote
from mlserver_torchflow.errors import ModelFetchError


@pytest.mark.parametrize(
    ("uri", "remote"),
    [
        ("models:/m/1", True),
        ("runs:/abc/model", True),
        ("s3://bucket/model", True),
        ("mlflow-artifacts:/1/abc/artifacts/model", True),
        ("file:///mnt/models", False),
        ("/mnt/models", False),
        ("./model", False),
        ("C:/models/m", False),
    ],
)
def test_which_uris_are_fetched(uri: str, remote: bool) -> None:
    assert is_remote(uri) is remote


def test_a_server_that_never_answers_fails_the_load_at_the_timeout(tmp_path: Path) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts, never answers: a hung tracking server
    tracking = f"http://127.0.0.1:{silent.getsockname()[1]}"
    started = time.monotonic()
    with pytest.raises(ModelFetchError, match=r"'models:/m@champion'.*within download_timeout \(3 s\)"):
        asyncio.run(fetch("models:/m@champion", tmp_path, tracking, None, 3.0))
    assert time.monotonic() - started < 10
    silent.close()
    assert not list(tmp_path.glob(f"{remote_worker.PARTIAL}/*")), "the killed child's folder was kept"
    assert not [p for p in tmp_path.rglob("*") if p.name == remote_worker.SOURCE]


def test_a_bucket_that_never_answers_fails_the_load_at_the_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", f"http://127.0.0.1:{silent.getsockname()[1]}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    started = time.monotonic()
    with pytest.raises(ModelFetchError, match=r"'s3://models/churn/model'.*within download_timeout"):
        asyncio.run(fetch("s3://models/churn/model", tmp_path, None, None, 3.0))
    assert time.monotonic() - started < 10
    silent.close()


def test_an_unreachable_server_is_named_in_seconds(tmp_path: Path) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens: connection refused
    started = time.monotonic()
    with pytest.raises(ModelFetchError, match=r"\(unreachable\).*127\.0\.0\.1.*MLFLOW_TRACKING_URI") as err:
        asyncio.run(fetch("models:/m/3", tmp_path, f"http://127.0.0.1:{port}", None, 120))
    assert time.monotonic() - started < 60, "MLflow's default retries (minutes) were not lowered"
    assert "models:/m/3" in str(err.value)


def test_an_unwritable_cache_names_the_setting(tmp_path: Path) -> None:
    taken = tmp_path / "a-file"
    taken.write_text("not a folder")  # unwritable for root too, unlike a chmod
    with pytest.raises(ModelFetchError, match=r"writable cache folder.*MLSERVER_TORCHFLOW_MODEL_CACHE"):
        asyncio.run(fetch("models:/m/1", taken / "cache", None, None, 10))


def test_what_a_killed_download_left_is_cleared(tmp_path: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    dead_pid = int(gone.stdout)
    stale = tmp_path / remote_worker.PARTIAL / f"{dead_pid}-abcd"
    live = tmp_path / remote_worker.PARTIAL / f"{os.getppid()}-abcd"
    (stale / "files").mkdir(parents=True)
    (live / "files").mkdir(parents=True)
    remote_worker._clear_dead_partials(tmp_path)
    assert not stale.exists()
    assert live.exists(), "a download still running in another process was removed"


def _client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


@pytest.mark.parametrize(
    ("err", "kind"),
    [
        (MlflowException("Registered Model with name=m not found", RESOURCE_DOES_NOT_EXIST), "not_found"),
        (MlflowException("Permission denied", PERMISSION_DENIED), "permission"),
        (MlflowException("No versions of model with name 'm' found"), "not_found"),
        (_client_error("AccessDenied", 403), "permission"),
        (_client_error("NoSuchBucket", 404), "not_found"),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), "unreachable"),
        (ValueError("something else"), "other"),
    ],
)
def test_errors_are_told_apart(err: BaseException, kind: str) -> None:
    assert remote_worker.classify(err) == kind


def test_a_wrapped_cause_counts() -> None:
    try:
        try:
            raise _client_error("AccessDenied", 403)
        except ClientError as inner:
            raise OSError("download failed") from inner
    except OSError as outer:
        assert remote_worker.classify(outer) == "permission"


def test_keys_differ_by_registry_and_version() -> None:
    one = remote_worker._key("models", "http://a", "m", "1")
    assert one != remote_worker._key("models", "http://b", "m", "1")
    assert one != remote_worker._key("models", "http://a", "m", "2")
    assert one == remote_worker._key("models", "http://a", "m", "1")
    assert one.startswith("models/m-1-")
