"""GPU suite (issue 6, item 6): a ResNet-50-class conv net and a BERT-base-class encoder, saved through
MLflow (pickle and pt2), served in FP32 and FP16 by ours (batching on and off), by mlserver-mlflow (the
peer: FP32 only, it has no dtype setting) and by the floor, and held to the raw in-process forward.

    python benchmarks/gpu.py                                  # the full suite, on CUDA when present
    python benchmarks/gpu.py --tiny --duration 2 --warmup 1   # the same pipeline, tiny models: a CPU smoke

The servers, the probe, the points and the load generator are servers.py's, probe.py's, measure.py's and
loadgen.py's; the raw forward runs in its own process (gpu_raw.py), the report is gpu_report.py's. See
benchmarks/README.md ("GPU suite").
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import gpu_goals
import gpu_models
import gpu_profile
import gpu_report
import models
import numpy as np
import servers
import torch
from measure import POOL, Point, measure, pool_seed
from probe import PROBE_SEED, probe
from servers import HERE, REPO, WORK, ServerConfig, parse_batch, server_configs, split_cpus, start_server

from mlserver_torchflow.common import first_line

HALF = "fp16"
TOLERANCES = {"fp32": 5e-3, HALF: 3e-2}  # TF32 convs on GPU and FP16 differ with the batch's shape


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny models (same architectures): a CPU smoke")
    p.add_argument("--models", default="resnet50,bert")
    p.add_argument("--formats", default="pickle,pt2")
    p.add_argument("--dtypes", default=f"fp32,{HALF}")
    p.add_argument(
        "--half", default="float16", choices=("float16", "bfloat16"), help=f"the dtype {HALF} uses"
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--servers", default="ours,peer,floor")
    p.add_argument("--ours", default="batched,unbatched")
    p.add_argument("--peer", default="unbatched,batched")
    p.add_argument("--ours-batch", default="64,0.005", help="max_batch_size,max_batch_time")
    p.add_argument("--peer-batch", default="32,0.005", help="the peer's (MLServer's batcher)")
    p.add_argument(
        "--preferred", default="auto", help="preferred_batch_sizes: auto (powers of 2), none, or a list"
    )
    p.add_argument("--peer-venv", type=Path, help="default: $BENCH_PEER_VENV or benchmarks/.work/peer-venv")
    p.add_argument("--concurrency", default="1,64")
    p.add_argument("--rows", default="1", help="rows per request; the goals use the first")
    p.add_argument("--protocols", default="grpc", help="grpc; rest too with grpc,rest")
    p.add_argument("--duration", type=float, default=10.0, help="seconds measured per point")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--raw-seconds", type=float, default=1.0, help="per batch size, raw forward")
    p.add_argument("--tolerance", type=float, help="override the per-dtype tolerance of the answers")
    p.add_argument("--profile", action="store_true", help="torch.profiler of the raw pass + cProfile of ours")
    p.add_argument("--client-procs", type=int, default=max(1, min(4, (os.cpu_count() or 2) // 4)))
    p.add_argument("--client-mode", choices=("asyncio", "threads"), default="asyncio")
    p.add_argument("--server-cpus", help="cores for the server (default: all but the clients')")
    p.add_argument("--no-pin", action="store_true")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--tag")
    p.add_argument("--work", type=Path, default=WORK / "gpu", help="saved models, raw figures")
    a = p.parse_args(argv)
    a.scale = "tiny" if a.tiny else "full"
    for key in ("models", "formats", "dtypes", "servers", "ours", "peer", "protocols"):
        setattr(a, key, [v for v in getattr(a, key).split(",") if v])
    a.concurrency = [int(c) for c in a.concurrency.split(",")]
    a.rows = [int(r) for r in a.rows.split(",")]
    size = parse_batch(a.ours_batch)[0]
    if a.preferred == "auto":
        a.preferred = [2**i for i in range(size.bit_length()) if 2**i <= size]
    else:
        a.preferred = [int(v) for v in a.preferred.split(",") if v.isdigit()]
    if a.peer_venv:
        servers.PEER_VENV = a.peer_venv.resolve()
    for key, allowed in (
        ("models", ("resnet50", "bert")),
        ("formats", ("pickle", "pt2")),
        ("dtypes", TOLERANCES),
    ):
        if not set(getattr(a, key)) <= set(allowed):
            p.error(f"--{key} takes {', '.join(allowed)}")
    return a


class References:
    """The raw process's answers, found by the input's bytes: what measure() and probe() check against."""

    def __init__(self, spec: Any, path: Path) -> None:
        self._by_digest: dict[bytes, np.ndarray] = {}
        with np.load(path) as saved:
            for key in saved.files:
                rows, seed = (int(v) for v in key.split(":"))
                self._by_digest[_digest(spec.inputs(rows, seed=seed))] = saved[key]

    def __call__(self, array: np.ndarray) -> np.ndarray:
        return self._by_digest[_digest(array)]


def _digest(array: np.ndarray) -> bytes:
    return hashlib.sha1(np.ascontiguousarray(array).tobytes()).digest()


def raw_forward(
    args: argparse.Namespace, key: str, path: Path, dtype: str, out: Path, cpus: list[int] | None
) -> dict[str, Any]:
    """gpu_raw.py in its own process, with the server's threads and cores."""
    size = parse_batch(args.ours_batch)[0]
    batches = sorted({*args.preferred, *(2**i for i in range(size.bit_length())), *args.rows, size})
    seeds = [(r, PROBE_SEED) for r in args.rows]
    seeds += [
        (r, pool_seed(w, k)) for r in args.rows for w in range(max(args.concurrency)) for k in range(POOL)
    ]
    cmd = [sys.executable, str(HERE / "gpu_raw.py"), "--model", str(path), "--key", key]
    cmd += ["--scale", args.scale, "--device", args.device, "--dtype", dtype, "--out", str(out)]
    cmd += ["--batches", ",".join(map(str, batches)), "--seconds", str(args.raw_seconds)]
    cmd += ["--seeds", ",".join(f"{r}:{s}" for r, s in seeds)] + (["--profile"] if args.profile else [])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if cpus:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(len(cpus))
    subprocess.run(
        cmd, env=env, check=True, preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    )
    return json.loads((out / "raw.json").read_text())


def batch_stats(server: Any, model: str) -> dict[str, float]:
    """Our batcher's histograms (sum and count) for `model`, read from the server's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    stats: dict[str, float] = {}
    try:
        text = server.metrics()
    except OSError:
        return stats
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name
            ours = name.startswith("torchflow_") and sample.labels.get("model") == model
            if ours and name.endswith(("_sum", "_count")):
                stats[name] = stats.get(name, 0.0) + sample.value
    return stats


def serve_and_measure(
    args: argparse.Namespace,
    cfg: ServerConfig,
    name: str,
    path: Path | None,
    spec: Any,
    extra: dict[str, Any] | None,
    reference: References | None,
    tolerance: float,
    cpus: tuple[list[int] | None, list[list[int]] | None],
) -> list[dict[str, Any]]:
    """One server: start, probe, every point (with our batcher's figures over its window), stop."""
    results: list[dict[str, Any]] = []
    big = max(args.rows) * int(np.prod(spec.row_shape)) * 8 > 3 * 2**20  # past gRPC's 4 MiB default
    settings = {"grpc_max_message_length": 256 * 2**20} if big else {}
    server = start_server(cfg, name, path or Path(), cpus[0], spec.row_shape, extra, (), **settings)
    try:
        iface = probe(server, cfg, name, spec, reference, args.protocols, args.rows, tolerance)
        for proto in args.protocols:
            for rows in args.rows:
                for conc in args.concurrency:
                    point = Point(name, cfg.key, cfg.group, proto, rows, conc)
                    edges: dict[str, dict[str, float]] = {}

                    def window(edge: str, edges: dict[str, dict[str, float]] = edges) -> None:
                        edges[edge] = batch_stats(server, name)

                    measure(point, server, iface, spec, reference, args, cpus[1], tolerance, window)
                    results.append({**asdict(point), **gpu_goals.window_stats(edges, args.duration)})
                    print(gpu_report.point_line(results[-1]), flush=True)
        if args.profile and cfg.key == "ours-batched":
            results[-1]["cprofile"] = gpu_profile.cprofile_window(
                args, cfg, name, path, spec, extra, iface, reference, cpus
            )
    finally:
        server.stop()
    return results


def failed(args: argparse.Namespace, cfg: ServerConfig, name: str, why: str) -> list[dict[str, Any]]:
    """The points a server that failed (to start, or its probe) would have given, each saying why."""
    empty = gpu_goals.window_stats({}, args.duration)
    return [
        {**asdict(Point(name, cfg.key, cfg.group, proto, rows, conc, failed=why)), **empty}
        for proto in args.protocols
        for rows in args.rows
        for conc in args.concurrency
    ]


def serve(args: argparse.Namespace, cfg: ServerConfig, name: str, *rest: Any) -> list[dict[str, Any]]:
    """serve_and_measure, or the failed points saying why: one server's failure never ends the suite."""
    print(f"[gpu] {name}: {cfg.label()}", flush=True)
    try:
        return serve_and_measure(args, cfg, name, *rest)
    except Exception as err:
        print(f"[gpu] {name} {cfg.key} failed: {err}", flush=True)
        return failed(args, cfg, name, first_line(err, 200))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device, on_gpu = args.device, args.device.startswith("cuda")
    cpus = split_cpus(args)
    args.server_cpus_used, args.client_cpus_used = cpus[0] or "all", cpus[1] or "all"
    configs = server_configs(args)
    notes = [] if on_gpu else [f"No CUDA: device {device}."]
    if args.half != "float16":
        notes.append(f"{HALF} rows are served as {args.half} (--half); BF16 replies come back as FP32.")
    if args.tiny:
        notes.append("Tiny models: a smoke test of the pipeline, not a measurement of the real models.")
    runs: list[dict[str, Any]] = []
    points: list[dict[str, Any]] = []
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    for key in args.models:
        spec = gpu_models.specs(args.scale)[key]
        for cfg in (c for c in configs if c.group == "floor"):
            points += serve(args, cfg, key, None, spec, None, None, 0.0, cpus)
        for fmt in args.formats:
            path = models.save(spec, args.work / "models", force=True, fmt=fmt)  # never a stale model
            for dtype in args.dtypes:
                setting = {"fp32": "keep", HALF: args.half}[dtype]
                name, raw_dir = f"{key}-{fmt}-{dtype}", args.work / "raw" / f"{key}-{fmt}-{dtype}"
                print(f"[gpu] {name}: raw forward on {device}", flush=True)
                try:
                    raw = raw_forward(args, key, path, setting, raw_dir, cpus[0])
                except subprocess.CalledProcessError as err:
                    notes.append(f"{name}: the raw forward failed ({err}); not served.")
                    continue
                profile = raw_dir / "profile.txt"
                runs.append(
                    {"name": name, "model": key, "format": fmt, "dtype": dtype, "setting": setting, **raw}
                )
                runs[-1]["profile"] = profile.read_text() if args.profile and profile.exists() else ""
                reference = References(spec, raw_dir / "references.npz")
                tolerance = args.tolerance or TOLERANCES[dtype]
                for cfg in configs:
                    if cfg.group == "floor" or (cfg.group == "peer" and dtype != "fp32"):
                        continue  # the peer has no dtype setting: it serves the saved FP32
                    extra = {"device": device, "dtype": setting}
                    if cfg.group == "ours" and cfg.batching and args.preferred:
                        extra["preferred_batch_sizes"] = args.preferred
                    points += serve(args, cfg, name, path, spec, extra, reference, tolerance, cpus)
    print(gpu_report.write(args, started, device, runs, points, notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
