"""torch's thread pools follow the cores the process may use: affinity, capped by a cgroup quota."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlserver_torchflow.serving.threads import usable_cores

AFFINITY = len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [
        ("max 100000\n", AFFINITY),  # no quota
        ("50000 100000\n", 1),  # half a core rounds up to one
        ("150000 100000\n", min(AFFINITY, 2)),
        ("6400000 100000\n", AFFINITY),  # a quota above the affinity: the affinity
        ("garbage", AFFINITY),
    ],
)
def test_cgroup_v2_quota_caps_the_cores(tmp_path: Path, cpu_max: str, expected: int) -> None:
    (tmp_path / "cpu.max").write_text(cpu_max)
    assert usable_cores(tmp_path / "cpu.max", tmp_path / "none", tmp_path / "none") == expected


def test_cgroup_v1_quota_caps_the_cores(tmp_path: Path) -> None:
    (tmp_path / "quota").write_text("100000\n")
    (tmp_path / "period").write_text("100000\n")
    assert usable_cores(tmp_path / "absent", tmp_path / "quota", tmp_path / "period") == 1
    (tmp_path / "quota").write_text("-1\n")  # v1's "no limit"
    assert usable_cores(tmp_path / "absent", tmp_path / "quota", tmp_path / "period") == AFFINITY


@pytest.mark.parametrize(("threads", "expected"), [(0, max(1, AFFINITY - 1)), (3, 3)])
def test_configure_sets_torchs_pool(threads: int, expected: int) -> None:
    # In a fresh process: torch's pools are process-wide, and this one's tests share them.
    code = (
        "import torch\n"
        "from mlserver_torchflow.serving import threads\n"
        f"threads.configure({threads}, 1)\n"
        "threads.configure(7, 7)\n"  # once per process: a second model changes nothing
        "print(torch.get_num_threads(), torch.get_num_interop_threads())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.split() == [str(expected), "1"]
