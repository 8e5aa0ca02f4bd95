"""A local S3 for integration tests: moto's server on a free loopback port, in its own process.

`moto_server(log_dir)` yields the endpoint (`http://127.0.0.1:<port>`) and stops the process on the way
out; `client(endpoint)` is a boto3 S3 client for it with the fake `CREDENTIALS` (moto accepts any).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest

from tests.server import free_port

# What boto3 (and everything built on it: MLflow, KServe's storage initializer) reads from the environment.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@contextlib.contextmanager
def moto_server(log_dir: Path, timeout: float = 60) -> Iterator[str]:
    """Start moto's S3 server, wait until it answers, yield its endpoint; always stop it.

    Fails the calling test (not an error inside pytest) when moto is missing, exits or never answers;
    its output is in `log_dir/moto.log` and in the failure message.
    """
    if find_spec("moto") is None:
        pytest.fail("moto is not installed: pip install 'moto[server]' boto3", pytrace=False)
    port = free_port()
    log_path = log_dir / "moto.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"moto server exited with {proc.returncode}:\n{log_path.read_text()}", pytrace=False
                )
            try:
                with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2):
                    break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"moto server not up after {timeout} s:\n{log_path.read_text()}", pytrace=False
                    )
                time.sleep(0.2)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def client(endpoint: str) -> Any:
    """A boto3 S3 client for the moto server at `endpoint`."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
    )
