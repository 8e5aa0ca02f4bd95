"""A real `mlflow server` (tracking + model registry) on a free loopback port, for integration tests.

It runs from the `mlflow-server` virtualenv of scripts/setup_kserve_envs.sh (the full `mlflow[auth]` and
boto3; the project's environment holds only mlflow-skinny, which has no server). The backend store is a
sqlite file in the server's folder; the artifact store is one of `ARTIFACTS`:

- `"proxied"`: `--serve-artifacts --artifacts-destination <root>/artifacts`. Clients see
  `mlflow-artifacts:/` URIs and move every byte through the server;
- `"s3"`: `--no-serve-artifacts --default-artifact-root s3://<bucket>/mlartifacts` on a moto S3 server
  (tests/s3.py). Clients get `s3://` URIs and talk to S3 themselves: `.env` carries
  MLFLOW_S3_ENDPOINT_URL and the fake AWS credentials for them (the server gets the same).

`basic_auth=True` runs MLflow's `--app-name basic-auth`: an admin `ADMIN_USERNAME`/`ADMIN_PASSWORD`
created at start from the config file that MLFLOW_AUTH_CONFIG_PATH names (`<root>/basic_auth.ini`, its
user database beside it). Every other user gets `default_permission` (MLflow's default: READ) unless a
grant says otherwise: `create_user` then `grant(..., "DENY")` makes a user who cannot read a model.
MLflow >= 3.18 accepts only READ/USE/EDIT/MANAGE/DENY as grants (no NO_PERMISSIONS) and passwords of
at least 12 characters.

    with MlflowServer(tmp_path, artifacts="s3", s3_endpoint=endpoint).running() as server:
        subprocess.run(..., env={**os.environ, **server.env})   # or client_env(monkeypatch, server)

`.env` is everything a client (this process, or an `mlserver start`) needs to reach the server and its
artifacts: MLFLOW_TRACKING_URI, the S3 variables in s3 mode, the admin's MLFLOW_TRACKING_USERNAME /
MLFLOW_TRACKING_PASSWORD with basic auth (`env_as(user, password)` for someone else). In-process clients
use `client_env(monkeypatch, server)`, which also resets MLflow's process-wide tracking/registry URI and
active experiment, so nothing leaks into later tests. The conftest fixture `mlflow_server` is a
module-scoped factory over all of this.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import client_envs
from tests import s3 as s3_helpers
from tests.server import LoggedProcess, free_port, wait_http

ARTIFACTS = ("proxied", "s3")
ADMIN_USERNAME = "admin"
ADMIN_PASSWORD = "admin-password-0123"  # basic auth wants >= 12 characters
# Prefix of the S3 artifact root inside the bucket: s3://<bucket>/mlartifacts/<experiment id>/...
S3_PREFIX = "mlartifacts"
# Seconds to wait for /health: ~8 s on an idle 2-core machine, more under load.
START_TIMEOUT = 120.0

# Variables of the test process that must not steer the server or a client elsewhere: the server gets
# its whole configuration from the command line and the variables below, a client from `.env`.
_FOREIGN_PREFIXES = ("MLFLOW_", "AWS_", "PYTHON", "VIRTUAL_ENV", "_MLFLOW_")
# Set for the server only: no job runner (seven huey consumers otherwise, slower start, nothing here
# needs jobs), no telemetry, no AWS config files or instance metadata lookups.
_SERVER_ENV = {
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}
# What `client_env` removes from a test's environment before it sets `.env` (credentials or URIs of
# another server, an AWS profile or endpoint that would override the moto one).
_CLIENT_UNSET = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_AUTH",
    "MLFLOW_S3_ENDPOINT_URL",
    "MLFLOW_EXPERIMENT_ID",
    "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_RUN_ID",
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
)


def mlflow_executable() -> Path:
    """`mlflow` of the `mlflow-server` virtualenv; runs the setup script first, fails the test without it."""
    python = client_envs.require_mlflow_server_python()
    return python.with_name("mlflow")


class MlflowServer(LoggedProcess):
    """`mlflow server` with its stores under `root`; `running()` starts it, waits for /health, stops it."""

    def __init__(
        self,
        root: Path,
        *,
        artifacts: str = "proxied",
        s3_endpoint: str | None = None,
        bucket: str = "mlflow",
        basic_auth: bool = False,
        default_permission: str = "READ",
        mlflow: Path | None = None,
    ) -> None:
        if artifacts not in ARTIFACTS:
            raise ValueError(f"artifacts must be one of {ARTIFACTS}, not {artifacts!r}")
        if artifacts == "s3" and not s3_endpoint:
            raise ValueError('artifacts="s3" needs s3_endpoint (tests.s3.moto_server)')
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.artifacts = artifacts
        self.s3_endpoint = s3_endpoint
        self.bucket = bucket
        self.basic_auth = basic_auth
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log_path = root / "mlflow-server.log"
        self.mlflow = mlflow
        self.proc: subprocess.Popen[bytes] | None = None

        self.backend_store_uri = f"sqlite:///{root / 'mlflow.db'}"
        if artifacts == "proxied":
            self.artifacts_destination: Path | None = root / "artifacts"
            self.artifact_root = "mlflow-artifacts:/"
        else:
            self.artifacts_destination = None
            self.artifact_root = f"s3://{bucket}/{S3_PREFIX}"

        self.env: dict[str, str] = {"MLFLOW_TRACKING_URI": self.uri}
        if artifacts == "s3":
            assert s3_endpoint is not None
            self.env.update(MLFLOW_S3_ENDPOINT_URL=s3_endpoint, **s3_helpers.CREDENTIALS)
        self.auth_config: Path | None = None
        if basic_auth:
            self.env.update(MLFLOW_TRACKING_USERNAME=ADMIN_USERNAME, MLFLOW_TRACKING_PASSWORD=ADMIN_PASSWORD)
            self.auth_config = root / "basic_auth.ini"
            self.auth_config.write_text(
                "[mlflow]\n"
                f"default_permission = {default_permission}\n"
                f"database_uri = sqlite:///{root / 'basic_auth.db'}\n"
                f"admin_username = {ADMIN_USERNAME}\n"
                f"admin_password = {ADMIN_PASSWORD}\n"
                "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            )

    def env_as(self, username: str, password: str) -> dict[str, str]:
        """`.env` with another user's basic-auth credentials."""
        return {**self.env, "MLFLOW_TRACKING_USERNAME": username, "MLFLOW_TRACKING_PASSWORD": password}

    def command(self) -> list[str]:
        cmd = [
            str(self.mlflow or mlflow_executable()),
            "server",
            "--backend-store-uri",
            self.backend_store_uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",  # uvicorn (MLflow 3's default server): one process, no supervisor
            "1",
        ]
        if self.artifacts == "proxied":
            cmd += ["--serve-artifacts", "--artifacts-destination", str(self.artifacts_destination)]
        else:
            cmd += ["--no-serve-artifacts", "--default-artifact-root", self.artifact_root]
        if self.basic_auth:
            cmd += ["--app-name", "basic-auth"]
        return cmd

    def server_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN_PREFIXES)}
        env.update(_SERVER_ENV)
        env.update({k: v for k, v in self.env.items() if k.startswith(("AWS_", "MLFLOW_S3_"))})
        if self.auth_config is not None:
            env["MLFLOW_AUTH_CONFIG_PATH"] = str(self.auth_config)
            env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = "mlserver-torchflow-tests"  # CSRF key basic-auth needs
        return env

    def start(self) -> MlflowServer:
        if self.artifacts == "s3":  # the artifact root's bucket must exist before anything is logged
            assert self.s3_endpoint is not None
            s3 = s3_helpers.client(self.s3_endpoint)
            if self.bucket not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
                s3.create_bucket(Bucket=self.bucket)
        command = self.command()
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.server_env(),
                cwd=self.root,
                start_new_session=True,  # `mlflow server` runs uvicorn as a child: stop the group
            )
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Until GET /health answers 200; raises with the server's output when it exits or times out."""
        assert self.proc is not None, "start() first"
        wait_http(
            f"{self.uri}/health", self.proc, self.log_path, f"mlflow server ({self.command()})", timeout
        )

    @contextlib.contextmanager
    def running(self, timeout: float = START_TIMEOUT) -> Iterator[MlflowServer]:
        """Started and healthy; stopped on the way out, whatever happened inside."""
        self.start()
        try:
            self.wait_ready(timeout)
            yield self
        finally:
            self.stop()

    # Basic-auth administration over REST, as the admin (mlflow-skinny cannot import
    # mlflow.server.auth.client: it needs the server's dependencies).

    def create_user(self, username: str, password: str) -> None:
        self.admin_request(
            "POST", "/api/2.0/mlflow/users/create", {"username": username, "password": password}
        )

    def grant(self, username: str, resource_type: str, resource_id: str, permission: str) -> None:
        """E.g. grant("bob", "registered_model", "churn", "DENY") (MLflow 3.18's per-user grants)."""
        self.admin_request(
            "POST",
            "/api/3.0/mlflow/users/permissions/grant",
            {
                "username": username,
                "resource_type": resource_type,
                "resource_id": resource_id,
                "permission": permission,
            },
        )

    def admin_request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One JSON request with the admin's credentials; raises with the answer on any non-2xx status."""
        token = base64.b64encode(f"{ADMIN_USERNAME}:{ADMIN_PASSWORD}".encode()).decode()
        request = urllib.request.Request(
            f"{self.uri}{path}",
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                text = response.read()
        except urllib.error.HTTPError as err:
            raise RuntimeError(f"{method} {path}: {err.code} {err.read().decode(errors='replace')}") from err
        return json.loads(text) if text.strip() else {}


def client_env(
    monkeypatch: pytest.MonkeyPatch,
    server: MlflowServer,
    username: str | None = None,
    password: str | None = None,
) -> None:
    """Point this process's MLflow client at `server` (optionally as another user) until the test ends.

    Every change goes through `monkeypatch`, so it is undone at teardown: the variables of `.env`, the
    removal of `_CLIENT_UNSET`, and MLflow's process-wide tracking URI, registry URI and active
    experiment (a `mlflow.set_tracking_uri` or `set_experiment` elsewhere would otherwise win over the
    environment, or keep pointing at a server that is gone). Call it again to switch user.
    """
    import mlflow.tracking._model_registry.utils as registry_utils
    import mlflow.tracking._tracking_service.utils as tracking_utils
    import mlflow.tracking.fluent as fluent

    for name in _CLIENT_UNSET:
        monkeypatch.delenv(name, raising=False)
    env = server.env if username is None else server.env_as(username, password or "")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
    monkeypatch.setattr(registry_utils, "_registry_uri", None)
    monkeypatch.setattr(fluent, "_active_experiment_id", None)
