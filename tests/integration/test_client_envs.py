"""The clients built outside the project's environment (tests/client_envs.py) run: KServe's SDK imports
in its own virtualenv and frames a request as the other tests expect, and perf_analyzer starts."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests import client_envs

# The first test may build every environment (a few minutes on a fresh machine).
pytestmark = pytest.mark.timeout(900)

# Offline: what `InferenceRESTClient.infer` would POST for one FP32 input set with the default
# `set_data_from_numpy(x)` (binary_data=True): the JSON header, then the raw tensor bytes.
SDK_CHECK = """
import importlib.metadata, importlib.util, json
import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig

x = np.arange(6, dtype=np.float32).reshape(2, 3)
tensor = InferInput("input-0", list(x.shape), "FP32")
tensor.set_data_from_numpy(x)
body, json_length = InferRequest("mlp", [tensor]).to_rest()
print(json.dumps({
    "kserve": importlib.metadata.version("kserve"),
    "torch": importlib.util.find_spec("torch") is not None,
    "clients": [c.__name__ for c in (InferenceRESTClient, InferenceGRPCClient, RESTConfig)],
    "json": json.loads(body[:json_length]),
    "tail_ok": body[json_length:] == x.tobytes(),
}))
"""


def test_kserve_sdk_imports_and_frames_binary_requests() -> None:
    python = client_envs.require_sdk_python()
    done = subprocess.run(
        [str(python), "-c", SDK_CHECK],
        env=client_envs.subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"{python} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["kserve"] == "0.21.0"
    assert got["torch"] is False, "torch is in the sdk virtualenv"
    assert got["clients"] == ["InferenceRESTClient", "InferenceGRPCClient", "RESTConfig"]
    (header,) = got["json"]["inputs"]
    assert header == {
        "name": "input-0",
        "shape": [2, 3],
        "datatype": "FP32",
        "parameters": {"binary_data_size": 24},
    }
    assert got["json"]["model_name"] == "mlp"
    assert got["tail_ok"], "the bytes after the JSON are not the tensor's"


def test_perf_analyzer_runs() -> None:
    pa = client_envs.require_perf_analyzer()
    done = subprocess.run([str(pa), "--version"], capture_output=True, text=True, timeout=60)
    out = done.stdout + done.stderr
    assert done.returncode == 0, f"{pa} --version exited {done.returncode}:\n{out}"
    assert re.search(r"Perf Analyzer Version 2\.51\.0\b", out), out
