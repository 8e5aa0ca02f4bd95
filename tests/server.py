"""A real `mlserver start` on free loopback ports, for integration tests and benchmarks."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MLSERVER = str(Path(sys.executable).with_name("mlserver"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_model_settings(
    folder: Path, name: str, uri: str | Path, mlserver: dict[str, Any] | None = None, **extra: Any
) -> None:
    """`mlserver` holds MLServer's own model fields (e.g. max_batch_size); `extra` ours."""
    folder.mkdir(parents=True, exist_ok=True)
    settings: dict[str, Any] = {
        "name": name,
        "implementation": "mlserver_torchflow.TorchFlowRuntime",
        "parameters": {"uri": str(uri), "extra": extra},
        **(mlserver or {}),
    }
    (folder / "model-settings.json").write_text(json.dumps(settings))


def stop_group(proc: subprocess.Popen[bytes], grace: float = 20) -> int:
    """SIGTERM to the process group started with `start_new_session`, SIGKILL after `grace` seconds, and
    SIGKILL to what is left of the group (a child that outlived its parent); returns the exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, what: str, timeout: float) -> None:
    """Until GET `url` answers 200; raises with the last of `log` when `proc` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout} s:\n{_tail(log)}")
        time.sleep(0.3)


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-6000:] if log.exists() else ""


class LoggedProcess:
    """A server the tests start in a process group of its own, its output in `log_path`."""

    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def stop(self) -> int | None:
        # stop_group also finishes children that may outlive the process that started them (uvicorn).
        return None if self.proc is None else stop_group(self.proc)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Server(LoggedProcess):
    """Starts MLServer over `models_dir`; `ready` waits until every named model answers ready."""

    def __init__(self, models_dir: Path, env: dict[str, str] | None = None, **settings: Any) -> None:
        self.dir = models_dir
        self.http_port, self.grpc_port, self.metrics_port = free_port(), free_port(), free_port()
        config = {
            "debug": False,
            "parallel_workers": 0,
            "host": "127.0.0.1",
            "http_port": self.http_port,
            "grpc_port": self.grpc_port,
            "metrics_port": self.metrics_port,
            **settings,
        }
        (models_dir / "settings.json").write_text(json.dumps(config))
        self.log_path = models_dir / "server.log"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def http(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self) -> Server:
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [MLSERVER, "start", str(self.dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )
        return self

    def wait_ready(self, models: list[str], timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        pending = list(models)
        while pending:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"mlserver exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"models {pending} not ready after {timeout}s:\n{self.log()[-4000:]}")
            pending = [m for m in pending if self.get(f"/v2/models/{m}/ready")[0] != 200]
            time.sleep(0.3)

    @contextlib.contextmanager
    def running(self, models: list[str]) -> Iterator[Server]:
        """Started and ready with `models`; stopped on the way out, whatever happened inside."""
        self.start()
        try:
            self.wait_ready(models)
            yield self
        finally:
            self.stop()

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=30) as response:
            return str(response.read().decode())

    def get(self, path: str) -> tuple[int, Any]:
        return self._request("GET", path, None, {})

    def post(self, path: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self._request("POST", path, raw, {"Content-Type": "application/json", **(headers or {})})

    def _request(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, Any]:
        request = urllib.request.Request(
            f"http://{self.http}{path}", data=body, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                status, text = response.status, response.read()
        except urllib.error.HTTPError as err:
            status, text = err.code, err.read()
        except (urllib.error.URLError, ConnectionError):
            return 0, None
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text.decode(errors="replace")
