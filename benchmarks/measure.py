"""One closed-loop point: client processes on their own cores, a fixed window after warm-up, and the
server's CPU read over that window only; every reply is checked, so a fast wrong answer never counts."""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from loadgen import Job, run_job
from probe import TOLERANCE, Interface
from servers import PinnedServer

POOL = 4  # distinct inputs per worker
BUSY_CORES = 0.25  # cores the rest of the machine may use in a window before the point counts as noisy


def machine_cpu_seconds() -> float:
    """CPU seconds the whole machine has been busy (all cores, /proc/stat), to tell what others used."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return float("nan")
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def wait_quiet(limit_s: float = 60.0) -> bool:
    """Between points (our server idle): until the whole machine uses under BUSY_CORES for 2 s."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        before = machine_cpu_seconds()
        time.sleep(2.0)
        if (machine_cpu_seconds() - before) / 2.0 < BUSY_CORES:
            return True
    return False


def pool_seed(worker: int, k: int) -> int:
    """The seed of worker `worker`'s k-th input: every input a load sends is known in advance."""
    return 100_000 + 1_000 * worker + k


# ------------------------------------------------------------------------------------------------ one point


@dataclass
class Point:
    model: str
    server: str  # ServerConfig.key
    group: str
    protocol: str
    rows: int
    concurrency: int
    duration: float = 0.0
    ok: int = 0
    errors: int = 0
    wrong: int = 0
    rps: float = float("nan")
    rows_per_s: float = float("nan")
    p50_ms: float = float("nan")
    p90_ms: float = float("nan")
    p99_ms: float = float("nan")
    mean_ms: float = float("nan")
    client_cpu: float = float("nan")  # cores the client process(es) used, summed
    server_cpu: float = float("nan")  # cores the server used
    other_cpu: float = float("nan")  # cores the rest of the machine used (a busy neighbour: noise)
    client_us_per_req: float = float("nan")  # client CPU per reply: 1e6 / this = one client core's ceiling
    req_per_server_cpu_s: float = float("nan")  # good replies per second of server CPU: efficiency
    samples: list[str] = field(default_factory=list)
    failed: str = ""
    dispatch: str = ""  # ours: the batcher's account of itself at the window's end (metadata)
    retries: int = 0  # times measured again because the rest of the machine was busy (suite.py)


def measure(
    point: Point,
    server: PinnedServer,
    iface: Interface,
    spec: Any,
    reference: Any | None,
    args: argparse.Namespace,
    client_cpus: list[list[int]] | None,
    tolerance: float = TOLERANCE,
    on_window: Callable[[str], None] | None = None,
) -> Point:
    """One closed-loop point. `on_window("start")` / `("end")` run at the window's edges (e.g. to read
    the server's metrics); replies are checked against `reference`, whose shapes they must have."""
    ctx = mp.get_context("spawn")
    procs_n = max(1, min(args.client_procs, point.concurrency))
    shares = [list(range(point.concurrency))[i::procs_n] for i in range(procs_n)]
    output_name = iface.reply_outputs[point.protocol][0]
    url = server.grpc if point.protocol == "grpc" else server.http
    queue, ready, go = ctx.Queue(), ctx.Semaphore(0), ctx.Event()
    window = ctx.Array("d", 2)
    procs = []
    for i, share in enumerate(shares):
        inputs = [[spec.inputs(point.rows, seed=pool_seed(w, k)) for k in range(POOL)] for w in share]
        expected = [[reference(a) for a in pool] for pool in inputs] if reference is not None else None
        job = Job(
            protocol=point.protocol,
            url=url,
            model=point.model,
            input_name=iface.input_name,
            output_name=output_name,
            workers=len(share),
            inputs=inputs,
            expected=expected,
            out_shape=[e.shape for e in expected[0]] if expected else [(point.rows, 10)] * POOL,
            tolerance=tolerance,
            cpus=client_cpus[i] if client_cpus else None,
            mode=args.client_mode,
        )
        proc = ctx.Process(target=run_job, args=(job, queue, ready, go, window), daemon=True)
        proc.start()
        procs.append(proc)
    for _ in procs:
        if not ready.acquire(timeout=120):
            point.failed = "a client process did not start within 120 s"
            break
    t_start = time.perf_counter() + args.warmup
    window[0], window[1] = t_start, t_start + args.duration
    go.set()
    time.sleep(max(t_start - time.perf_counter(), 0))
    if on_window:
        on_window("start")
    cpu0, all0, wall0 = server.cpu_seconds(), machine_cpu_seconds(), time.perf_counter()
    time.sleep(max(window[1] - time.perf_counter(), 0))
    wall = time.perf_counter() - wall0
    point.server_cpu = (server.cpu_seconds() - cpu0) / wall
    machine_cpu = (machine_cpu_seconds() - all0) / wall
    if on_window:
        on_window("end")
    point.duration = args.duration

    results: list[dict[str, Any]] = []
    deadline = time.monotonic() + 120
    while len(results) < len(procs) and time.monotonic() < deadline:
        try:
            results.append(queue.get(timeout=max(deadline - time.monotonic(), 0.1)))
        except Exception:
            break
    for proc in procs:
        proc.join(timeout=5)
        if proc.is_alive():
            proc.kill()
    if len(results) < len(procs):
        point.failed = point.failed or "a client process gave no result (hung requests?)"
    crashes = [r["crash"] for r in results if "crash" in r]
    if crashes:
        point.failed = "client crashed: " + crashes[0][:1500]
    good = [r for r in results if "crash" not in r]
    latencies = np.concatenate([r["latencies"] for r in good]) if good else np.empty(0)
    point.ok = int(sum(r["ok"] for r in good))
    point.errors = int(sum(r["errors"] for r in good))
    point.wrong = int(sum(r["wrong"] for r in good))
    point.samples = [s for r in good for s in r["samples"]][:5]
    point.client_cpu = float(sum(r["client_cpu"] for r in good)) if good else float("nan")
    point.other_cpu = machine_cpu - point.server_cpu - point.client_cpu
    point.rps = point.ok / args.duration
    replies = point.ok + point.errors + point.wrong
    if point.server_cpu > 0:
        point.req_per_server_cpu_s = point.rps / point.server_cpu
    if replies:
        point.client_us_per_req = point.client_cpu * args.duration / replies * 1e6
    point.rows_per_s = point.rps * point.rows
    if latencies.size:
        ms = latencies * 1e3
        point.p50_ms, point.p90_ms, point.p99_ms = (float(v) for v in np.percentile(ms, [50, 90, 99]))
        point.mean_ms = float(ms.mean())
    if server.proc is not None and server.proc.poll() is not None:
        point.failed = point.failed or f"the server exited with {server.proc.returncode}"
    return point
