"""The real clients that live outside the project's environment, built by scripts/setup_kserve_envs.sh
under `$KSERVE_ENVS` (default `<repo>/.kserve-envs`, as tests/integration/test_storage_initializer.py
finds its environments):

- `sdk_python()`: the python of the `sdk` virtualenv, KServe's Python SDK `kserve==0.21.0`. Its pins clash
  with ours and its generated `inference.*` protobufs with MLServer's and tritonclient's, so tests run it
  in a subprocess (`subprocess.run([sdk_python(), "-c", code], env=subprocess_env())`), never import it;
- `perf_analyzer()`: `perf-analyzer/bin/pa`, the wrapper around tritonclient[all]==2.51.0's perf_analyzer
  that puts libcudart on the library path (benchmarks/setup_perf_analyzer.sh);
- `mlflow_server_python()`: the python of the `mlflow-server` virtualenv, the full `mlflow[auth]` (at the
  version of the project's mlflow-skinny where PyPI has it) with boto3: tests/mlflow_server.py runs its
  `mlflow server`.

All answer None when the environment is missing or was never finished. A test that needs one calls
`require_sdk_python()` / `require_perf_analyzer()`: like test_storage_initializer.py they run the setup
script once per session (seconds when everything is there, minutes on a fresh machine) and fail the
test, never skip it, when the script fails or leaves the environment missing
(`require_mlflow_server_python()` likewise).
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SETUP = REPO / "scripts" / "setup_kserve_envs.sh"
# Seconds the setup script may take on a fresh machine (every environment built, libb64 installed).
SETUP_TIMEOUT = 840


def kserve_envs() -> Path:
    return Path(os.environ.get("KSERVE_ENVS") or REPO / ".kserve-envs")


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def sdk_python() -> Path | None:
    """The `sdk` virtualenv's python (kserve==0.21.0), if the setup script finished building it."""
    env = kserve_envs() / "sdk"
    python = env / "bin" / "python"
    return python if _executable(python) and (env / ".installed").is_file() else None


def perf_analyzer() -> Path | None:
    """The `pa` wrapper of the `perf-analyzer` virtualenv, if the setup script finished it."""
    env = kserve_envs() / "perf-analyzer"
    pa = env / "bin" / "pa"
    return pa if _executable(pa) and (env / ".perf-analyzer-installed").is_file() else None


def mlflow_server_python() -> Path | None:
    """The `mlflow-server` virtualenv's python (full mlflow[auth] + boto3), if the setup script finished it."""
    env = kserve_envs() / "mlflow-server"
    python = env / "bin" / "python"
    return python if _executable(python) and (env / ".installed").is_file() else None


def subprocess_env() -> dict[str, str]:
    """This process's environment without the PYTHON* variables, which must not reach another venv."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}


@functools.cache
def _setup() -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            ["bash", str(SETUP)],
            # VENV: the environment whose mlflow-skinny version the mlflow-server one matches (this one).
            env={**os.environ, "KSERVE_ENVS": str(kserve_envs()), "VENV": sys.prefix},
            capture_output=True,
            text=True,
            timeout=SETUP_TIMEOUT,
        )
    except subprocess.TimeoutExpired as e:
        return subprocess.CompletedProcess(e.cmd, -1, str(e.stdout or ""), f"timed out after {e.timeout} s")


def ensure() -> None:
    """Run the setup script (once per session); fail the calling test if it fails."""
    done = _setup()
    if done.returncode != 0:
        pytest.fail(f"{SETUP} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}", pytrace=False)


def _require(find: Callable[[], Path | None], what: str) -> Path:
    ensure()
    found = find()
    if found is None:
        pytest.fail(f"{SETUP} left no finished {what} in {kserve_envs()}", pytrace=False)
    return found


def require_sdk_python() -> Path:
    return _require(sdk_python, "sdk virtualenv")


def require_perf_analyzer() -> Path:
    return _require(perf_analyzer, "perf-analyzer/bin/pa")


def require_mlflow_server_python() -> Path:
    return _require(mlflow_server_python, "mlflow-server virtualenv")
