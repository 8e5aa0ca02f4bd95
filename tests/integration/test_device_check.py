"""The prepared GPU-machine script (scripts/device_check.sh) and its wheelhouse, checked where CI can.

- The dry run (`DRY_RUN=1`, this checkout's .venv, tiny models, on CPU) runs every step of the script:
  each must exit 0 and leave what the device run will be read for (versions, the CUDA-graph thread
  check, a stage breakdown with a profiler table, the trimmed suite's report).
- The wheelhouse (scripts/device_wheels.sh, Python 3.12 wheels from the package index) must hold the
  runtime's and the peer's packages, none of what the device image has (torch above all), and fit with
  the repository into the 64 MiB one device call carries.
The device run itself needs the GPU machine (not lent while this was written).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CARRY_LIMIT = 64 * 2**20
STEPS = ("versions", "copies", "graphs", "pytest-gpu", "stages", "suite")

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("device-check")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "device_check.sh")],
        env={**env, "DRY_RUN": "1", "OUT": str(out)},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=840,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def _json(out: Path, step: str) -> dict:
    lines = [line for line in (out / f"{step}.log").read_text().splitlines() if line.startswith("{")]
    assert lines, (out / f"{step}.log").read_text()[-2000:]
    return json.loads(lines[-1])


def test_every_step_runs_and_passes(dry_run: Path) -> None:
    status = dict(line.split(" ", 1) for line in (dry_run / "steps.txt").read_text().splitlines())
    assert list(status) == list(STEPS)
    failed = {
        name: (dry_run / f"{name}.log").read_text()[-1500:] for name, s in status.items() if "rc=0 " not in s
    }
    assert not failed, failed


def test_each_step_leaves_what_the_device_run_is_read_for(dry_run: Path) -> None:
    versions = (dry_run / "versions.log").read_text()
    assert "imports ok" in versions and "torch 2." in versions
    assert _json(dry_run, "copies")["skipped"].startswith("no CUDA")
    graphs = _json(dry_run, "graphs")
    assert graphs["with_thread_state"].startswith("ok"), graphs
    stages = _json(dry_run, "stages")
    assert set(stages["median_ms"]) == {"stage", "copy_in", "forward", "copy_out"}
    assert stages["per_batch_ms"]["sequential"] > 0 and stages["per_batch_ms"]["pipelined"] > 0
    assert stages["median_ms"]["forward"] > 0 and "Self CPU" in stages["profile_top"]
    assert " passed" in (dry_run / "pytest-gpu.log").read_text()
    reports = list((dry_run / "suite").glob("*.json"))
    assert reports and json.loads(reports[0].read_text())["goals"]


def test_the_wheelhouse_fits_one_device_call_and_leaves_out_what_the_image_has(tmp_path: Path) -> None:
    dest = tmp_path / "wheels"
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "device_wheels.sh"), str(dest)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    names = {w.name.split("-")[0].lower().replace("_", "-") for w in dest.glob("*.whl")}
    assert {
        "mlserver",
        "mlserver-mlflow",
        "mlflow",
        "mlflow-skinny",
        "fastapi",
        "uvicorn",
        "pydantic",
    } <= names
    assert not names & {"torch", "numpy", "pandas", "grpcio", "protobuf", "triton"}, names
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    repo_bytes = sum(
        (REPO / p).stat().st_size for p in tracked.decode().split("\0") if p and (REPO / p).is_file()
    )
    wheel_bytes = sum(w.stat().st_size for w in dest.glob("*.whl"))
    assert repo_bytes + wheel_bytes < CARRY_LIMIT, (repo_bytes, wheel_bytes)
