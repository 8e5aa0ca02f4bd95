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
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

from measure import Point, measure
from perf_analyzer import PA_VENV, perf_analyzer
from plot import plot
from probe import load_reference, probe
from report import fmt, machine_tag, markdown, no_nan
from servers import HERE, record_death, scan_log, server_configs, split_cpus, start_server

from mlserver_torchflow.common import first_line

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
    parser.add_argument("--models", help="default mlp,conv (quick mlp)")
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
    import models as model_defs

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

    points: list[Point] = []
    ifaces: dict[str, dict[str, Any]] = {}
    pa_results: list[dict[str, Any]] = []
    logs: dict[str, dict[str, Any]] = {}
    deaths: dict[str, list[dict[str, Any]]] = {}
    for model in args.models:
        spec = model_defs.SPECS[model]
        model_path = model_defs.save(spec)
        reference = load_reference(model_path)
        for cfg in configs:
            key = f"{model}/{cfg.key}"
            print(f"[bench] starting {key}", flush=True)
            try:
                server = start_server(cfg, model, model_path, server_cpus, spec.row_shape)
            except Exception as err:
                ifaces[key] = {"error": f"did not start: {first_line(err, 200)}"}
                print(f"[bench] {key} did not start: {err}", flush=True)
                for proto in args.protocols:
                    for rows in args.rows:
                        for conc in args.concurrency:
                            points.append(
                                Point(
                                    model,
                                    cfg.key,
                                    cfg.group,
                                    proto,
                                    rows,
                                    conc,
                                    failed=f"server did not start: {first_line(err, 200)}",
                                )
                            )
                continue
            mark = 0
            try:
                try:
                    iface = probe(server, cfg, model, spec, reference, args.protocols, args.rows)
                    ifaces[key] = asdict(iface)
                except Exception as err:
                    ifaces[key] = {"error": f"probe failed: {first_line(err, 200)}"}
                    print(f"[bench] {key} probe failed: {err}", flush=True)
                    iface = None
                mark = len(server.log())
                for proto in args.protocols:
                    for rows in args.rows:
                        for conc in args.concurrency:
                            point = Point(model, cfg.key, cfg.group, proto, rows, conc)
                            if (
                                iface is not None
                                and server.proc is not None
                                and server.proc.poll() is not None
                            ):
                                # It died during the previous point: keep its log, start it again, go on.
                                death = record_death(server, mark, f"{proto} rows={rows} conc={conc}")
                                deaths.setdefault(key, []).append(death)
                                print(
                                    f"[bench] {key} had exited ({death['exit_code']}); restarting. Its last "
                                    f"log lines:\n    " + "\n    ".join(death["log_tail"][-8:]),
                                    flush=True,
                                )
                                try:
                                    server = start_server(cfg, model, model_path, server_cpus, spec.row_shape)
                                    mark = 0
                                except Exception as err:
                                    iface = None
                                    ifaces[key] = {"error": f"did not restart: {first_line(err, 200)}"}
                            if iface is None:
                                point.failed = point.failed or ifaces[key]["error"]
                            else:
                                try:
                                    measure(
                                        point,
                                        server,
                                        iface,
                                        spec,
                                        None if cfg.group == "floor" else reference,
                                        args,
                                        client_cpus,
                                    )
                                except Exception as err:
                                    point.failed = f"harness error: {first_line(err, 200)}"
                                    traceback.print_exc()
                            points.append(point)
                            print(
                                f"[bench]   {cfg.key:16s} {proto:4s} rows={rows:<3d} conc={conc:<3d} "
                                f"{fmt(point.rps):>7s} req/s  p50 {fmt(point.p50_ms, 2):>7s} ms  "
                                f"p99 {fmt(point.p99_ms, 2):>7s} ms  err {point.errors} wrong {point.wrong}  "
                                f"client {fmt(point.client_cpu, 2)} server {fmt(point.server_cpu, 2)} cores"
                                f"{'  FAILED: ' + point.failed[:200] if point.failed else ''}",
                                flush=True,
                            )
                if (
                    args.perf_analyzer
                    and cfg.group in args.perf_analyzer_on
                    and iface is not None
                    and "rest" in args.protocols
                ):
                    print(f"[bench] perf_analyzer against {key}", flush=True)
                    info = perf_analyzer(server, model, spec, iface, args, client_cpus)
                    info.update(server=f"{model}-{cfg.key}", model=model, server_config=cfg.key)
                    pa_results.append(info)
                    print(f"[bench]   {info['status']}", flush=True)
            finally:
                if server.proc is not None and server.proc.poll() is not None:
                    deaths.setdefault(key, []).append(
                        record_death(server, mark, "the end (it died in the last point)")
                    )
                server.stop()
                logs[key] = scan_log(server, mark)
                logs[key]["deaths"] = deaths.get(key, [])

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
