"""torch's CPU thread pools, sized once per process to the cores the process may really use.

torch sizes its intra-op pool to the machine's physical cores. In a pod with a CPU limit that is the
node's cores, not the limit: 64 threads on a 2-CPU quota spend the quota spinning and get throttled.
And on the cores it has, the event loop that parses and answers requests competes with those threads
(OpenMP workers spin for a while after each parallel region). So the default leaves one core to the
event loop: `torch_threads` 0 means `max(1, cores - 1)`, where `cores` is the smaller of the CPU
affinity and the cgroup quota. docs/operations.md has the measurements behind it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from ..common import logger

CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max <period>"
CFS_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")  # cgroup v1
CFS_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")
_done = {"configured": False}


def usable_cores(cpu_max: Path = CPU_MAX, quota: Path = CFS_QUOTA, period: Path = CFS_PERIOD) -> int:
    """The cores this process may use: its affinity, capped by a cgroup CPU quota (rounded up)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    limit = _quota(cpu_max, quota, period)
    return max(1, min(cores, math.ceil(limit))) if limit else cores


def _quota(cpu_max: Path, quota: Path, period: Path) -> float | None:
    try:
        if cpu_max.exists():
            value, per = cpu_max.read_text().split()[:2]
            return None if value == "max" else int(value) / int(per)
        if quota.exists() and period.exists():
            value_us = int(quota.read_text())
            return None if value_us <= 0 else value_us / int(period.read_text())
    except (OSError, ValueError):
        return None
    return None


def configure(threads: int, interop: int) -> None:
    """Set the pools once per process (torch allows the inter-op pool to be set only once)."""
    if _done["configured"]:
        return
    _done["configured"] = True
    cores = usable_cores()
    intra = threads or max(1, cores - 1)
    torch.set_num_threads(intra)
    if interop:
        try:
            torch.set_num_interop_threads(interop)
        except RuntimeError as err:  # already started by something that ran before the first model
            logger.warning("torch_interop_threads %d not applied: %s", interop, err)
    logger.info(
        "torch CPU threads: %d intra-op (%s), %d inter-op; %d usable cores",
        intra,
        "torch_threads" if threads else "the usable cores less one, for the event loop",
        torch.get_num_interop_threads(),
        cores,
    )
