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


def test_a_copys_thread_runs_the_configured_pool_not_openmps_default(tmp_path: Path) -> None:
    """A new thread starts at OpenMP's default team size (here 4, from OMP_NUM_THREADS) until an ATen
    parallel op reads torch's setting; a load runs ops that do not, and the team it starts spins after
    every pass. The copy's thread set-up (`bind_thread`) applies the setting first: one thread, no team.
    Without it this process gains 3 OpenMP workers (4 threads instead of 1)."""
    code = (
        "import os, sys, threading, torch\n"
        "from mlserver_torchflow.engine.device import bind_thread\n"
        "from mlserver_torchflow.serving import threads\n"
        "threads.configure(1, 0)\n"
        "torch.manual_seed(0)\n"
        "module = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 8))\n"
        "torch.save(module, sys.argv[1])\n"
        "def copy():\n"
        "    bind_thread(torch.device('cpu'))\n"
        "    loaded = torch.load(sys.argv[1], weights_only=False)\n"
        "    with torch.inference_mode():\n"
        "        for _ in range(20):\n"
        "            loaded(torch.randn(8, 64))\n"
        "before = len(os.listdir('/proc/self/task'))\n"
        "thread = threading.Thread(target=copy)\n"
        "thread.start()\n"
        "thread.join()\n"
        "print(len(os.listdir('/proc/self/task')) - before)\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "4"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "m.pt")],
        capture_output=True, text=True, check=True, timeout=120, env=env,
    )  # fmt: skip
    # Without the set-up: 4 (OpenMP workers stay after the thread). With it, 1, or 0 when a short-lived thread
    # of torch's start-up was still alive at the first count.
    assert int(out.stdout.split()[-1]) in (0, 1)
