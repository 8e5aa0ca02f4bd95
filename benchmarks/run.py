"""Side-by-side benchmark: TorchFlowRuntime ("ours") against mlserver-mlflow ("the peer") and an
answer-at-once runtime ("the floor"), all on MLServer 1.7.1, driven by the same load generator.

    python benchmarks/run.py [--quick] [--duration S] [--concurrency 1,8,32,64] [--protocols rest,grpc]
                             [--rows 1,8] [--models mlp,conv] [--out benchmarks/results] [--perf-analyzer]

Servers run one at a time (the cores are shared), each on free loopback ports with debug: false and
parallel_workers: 0, pinned to the server cores; the client runs in its own process(es) pinned to the other
core(s). See benchmarks/README.md for what is measured and how to read the ratios.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from perf_analyzer import PA_VENV
from plot import plot
from report import machine_tag, markdown, no_nan
from servers import HERE, server_configs, split_cpus
from suite import run_suite

# ------------------------------------------------------------------------------------------------ main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a short trial: 3 s per point, concurrency 1,8, mlp, 1 row (flags given win)",
    )
    parser.add_argument("--duration", type=float, help="seconds measured per point (default 15; quick 3)")
    parser.add_argument(
        "--warmup", type=float, help="seconds of load before each window (default 3; quick 1)"
    )
    parser.add_argument("--concurrency", help="default 1,8,32,64 (quick 1,8)")
    parser.add_argument("--protocols", default="rest,grpc")
    parser.add_argument("--rows", help="rows per request (default 1,8; quick 1)")
    parser.add_argument("--models", help="default mlp,conv (quick mlp); also sim-launch, sim-F-R (models.py)")
    parser.add_argument("--servers", default="floor,ours,peer", help="which groups to run")
    parser.add_argument(
        "--ours",
        default="batched,unbatched",
        help="our configurations, in order; the first one is 'ours' in the summary",
    )
    parser.add_argument("--peer", default="unbatched,batched", help="the peer's configurations")
    parser.add_argument(
        "--ours-batch", default="64,0.005", help="max_batch_size,max_batch_time for ours-batched"
    )
    parser.add_argument(
        "--peer-batch", default="32,0.005", help="max_batch_size,max_batch_time for peer-batched"
    )
    parser.add_argument("--client-mode", choices=("asyncio", "threads"), default="asyncio")
    parser.add_argument("--client-procs", type=int, default=1, help="client processes, one core each")
    parser.add_argument("--server-cpus", help="cores for the server, e.g. 0 (default: all but the client's)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and client to cores")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--tag", help="file name stem (default: arch-<N>cpu-<cpu model>)")
    parser.add_argument(
        "--perf-analyzer", action="store_true", help="also run Triton's perf_analyzer against ours over HTTP"
    )
    parser.add_argument("--perf-analyzer-bin", default=str(PA_VENV / "bin" / "pa"))
    parser.add_argument(
        "--perf-analyzer-on",
        default="ours",
        help="which group(s) perf_analyzer targets (ours; floor,peer also possible)",
    )
    args = parser.parse_args()
    q = args.quick
    args.duration = args.duration or (3.0 if q else 15.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if q else 3.0)
    args.concurrency = [int(c) for c in (args.concurrency or ("1,8" if q else "1,8,32,64")).split(",")]
    args.rows = [int(r) for r in (args.rows or ("1" if q else "1,8")).split(",")]
    args.models = (args.models or ("mlp" if q else "mlp,conv")).split(",")
    args.protocols = args.protocols.split(",")
    args.servers = args.servers.split(",")
    args.ours = [v for v in args.ours.split(",") if v]
    args.peer = [v for v in args.peer.split(",") if v]
    args.perf_analyzer_on = args.perf_analyzer_on.split(",")
    for v in args.ours + args.peer:
        if v not in ("batched", "unbatched"):
            parser.error(f"configurations are 'batched' and 'unbatched', got {v!r}")
    return args


def main() -> int:
    args = parse_args()
    tag = args.tag or (machine_tag() + ("-quick" if args.quick else ""))
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    server_cpus, client_cpus = split_cpus(args)
    args.server_cpus_used = server_cpus or "all"
    args.client_cpus_used = client_cpus or "all"
    configs = server_configs(args)
    args.out.mkdir(parents=True, exist_ok=True)
    print(
        f"[bench] {tag}: servers {[c.key for c in configs]}, models {args.models}, protocols {args.protocols}, "
        f"rows {args.rows}, concurrency {args.concurrency}, {args.duration:g}s/point; server cores "
        f"{args.server_cpus_used}, client cores {args.client_cpus_used}",
        flush=True,
    )

    res = run_suite(args, args.models, lambda _model: configs, server_cpus, client_cpus)
    points, ifaces, pa_results, logs = res.points, res.ifaces, res.perf_analyzer, res.logs

    stem = args.out / tag
    Path(f"{stem}.json").write_text(
        json.dumps(
            no_nan(
                {
                    "tag": tag,
                    "started": started,
                    "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                    "points": [asdict(p) for p in points],
                    "interfaces": ifaces,
                    "perf_analyzer": pa_results,
                    "server_logs": logs,
                }
            ),
            indent=1,
            default=str,
            allow_nan=False,
        )
    )
    report = markdown(points, ifaces, pa_results, args, tag, started, configs, logs)
    Path(f"{stem}.md").write_text(report)
    problem = plot(points, args, tag, Path(f"{stem}.png"))
    print()
    print(report)
    print(f"[bench] wrote {stem}.md, {stem}.json" + (f"; {problem}" if problem else f", {stem}.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
