"""The GPU suite (benchmarks/gpu.py) end to end on CPU, with tiny models: the pipeline CI can run.

It saves the tiny BERT-class encoder as pt2, measures its raw forward in FP16 (CPU kernels exist for it, so
the FP16 path of a GPU run, FP16 replies included, is the one exercised), serves it with ours batching on
and off, drives both over gRPC and writes the report. Figures from a shared CPU mean nothing; what is checked
is that every goal row is there with a number (the peer's is absent: no peer venv in CI), that every reply
was checked and right, and that the check would catch a mixed-up reply.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

from loadgen import check  # noqa: E402

MODEL = "bert-pt2-fp16"


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str, Path]:
    out = tmp_path_factory.mktemp("gpu-suite")
    cmd = [sys.executable, str(REPO / "benchmarks" / "gpu.py"), "--tiny", "--models", "bert"]
    cmd += ["--formats", "pt2", "--dtypes", "fp16", "--servers", "ours", "--concurrency", "1,4"]
    cmd += ["--duration", "1", "--warmup", "0.3", "--raw-seconds", "0.1", "--ours-batch", "8,0.002"]
    cmd += ["--out", str(out), "--work", str(out / "work"), "--tag", "smoke"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out / "smoke.json").read_text()), (out / "smoke.md").read_text(), out / "work"


def test_every_goal_is_reported_with_a_figure(suite: tuple[dict[str, Any], str, Path]) -> None:
    doc, report, _ = suite
    goals = {g["goal"].split(",")[0]: g for g in doc["goals"] if g["model"] == MODEL}
    assert len(goals) == 4, goals
    for name, goal in goals.items():
        assert goal["goal"] in report
        if name.startswith("ours / mlserver-mlflow"):  # no peer venv here
            assert goal["value"] is None and goal["verdict"] == "not measured"
        else:
            assert isinstance(goal["value"], float) and goal["verdict"] in ("met", "missed"), goal
    assert doc["limits"] and doc["limits"][0]["mean_batch"] >= 1.0
    assert set(doc["raw"][0]["forward"]) == {"1", "2", "4", "8"}


def test_every_reply_was_checked_and_right(suite: tuple[dict[str, Any], str, Path]) -> None:
    doc, _, _ = suite
    points = [p for p in doc["points"] if p["model"] == MODEL]
    assert {p["server"] for p in points} == {"ours-batched", "ours-unbatched"}
    for p in points:
        assert not p["failed"] and p["ok"] > 0 and p["errors"] == 0 and p["wrong"] == 0, p
        assert p["mean_batch"] >= 1.0


def test_the_check_catches_another_inputs_answer(suite: tuple[dict[str, Any], str, Path]) -> None:
    """The suite's FP16 tolerance (gpu.TOLERANCES) still tells two inputs' answers apart."""
    _, _, work = suite
    from gpu import TOLERANCES

    with np.load(work / "raw" / MODEL / "references.npz") as refs:
        first, second = refs["1:100000"], refs["1:101000"]  # worker 0's and worker 1's first inputs
    tolerance = TOLERANCES["fp16"]
    assert first.dtype == np.float32  # computed in FP16, answered in the signature's FP32 (precision.py)
    assert check(first, first.shape, first, tolerance) is None
    assert "values differ" in str(check(second, first.shape, first, tolerance))
    assert "values differ" in str(check(first + np.float16(0.1), first.shape, first, tolerance))
