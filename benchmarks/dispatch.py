"""The dispatch benchmark: how close each batcher gets to what the device allows. Simulated devices (sleep
F + R x rows per call, GIL released) from launch-bound to row-bound, plus the real mlp and conv, served by
ours (batched), the peer (batched and unbatched), the floor and, for the sims, the ideal floor (batching that
knows its clients, on MLServer's own path: the bound realised here), 1-row requests, 1/8/32 closed-loop clients.

    python benchmarks/dispatch.py [--quick] [--pin [on|both]] [--sim F_MS,R_MS ...] [--tag NAME]

Unpinned by default (server and client share the cores); `--pin` pins as run.py does, `--pin both` runs
both (the pinned files get `-pinned` in their name). See benchmarks/README.md ("Dispatch benchmark").
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

import models
import wake
from dispatch_report import real_rows, sections, sim_rows
from plot import plot
from report import machine_tag, markdown, no_nan
from servers import HERE, REPO, ServerConfig, server_configs, split_cpus
from suite import run_suite


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: 1.5 s points, sim-mid only, REST (flags given win)"
    )
    parser.add_argument("--sims", help="sim shapes (default sim-launch,sim-mid,sim-row; quick sim-mid)")
    parser.add_argument(
        "--sim", action="append", default=[], metavar="F_MS,R_MS", help="one more sim shape (repeatable)"
    )
    parser.add_argument("--models", default="mlp,conv", help="real models ('' for none)")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--protocols", help="default rest,grpc (quick rest)")
    parser.add_argument("--duration", type=float, help="seconds measured per point (default 4; quick 1.5)")
    parser.add_argument("--warmup", type=float, help="seconds of load before a window (default 1; quick 0.5)")
    parser.add_argument("--ours-batch", default="64,0.010", help="max_batch_size,max_batch_time for ours")
    parser.add_argument("--peer-batch", default="64,0.010", help="the same for peer-batched")
    parser.add_argument(
        "--pin",
        nargs="?",
        const="on",
        default="off",
        choices=("off", "on", "both"),
        help="pin server and client to their cores (as run.py does); both: unpinned, then pinned",
    )
    parser.add_argument(
        "--retry-busy", type=int, default=2, help="measure a point again (when quiet) if the machine was busy"
    )
    parser.add_argument(
        "--retry-budget",
        dest="retry_budget_s",
        type=float,
        default=300.0,
        help="seconds of such waits, in all",
    )
    parser.add_argument(
        "--no-floor-ideal",
        dest="floor_ideal",
        action="store_false",
        help="skip the floor that batches the sims knowing its clients (ideal batching, realised here)",
    )
    parser.add_argument("--client-mode", choices=("asyncio", "threads"), default="asyncio")
    parser.add_argument("--client-procs", type=int, default=1, help="client processes, one core each")
    parser.add_argument("--server-cpus", help="cores for the server when pinned (default: all but the last)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--tag", help="file name stem (default: <arch>-<N>cpu-<cpu model>-dispatch)")
    args = parser.parse_args(argv)
    q = args.quick
    default_sims = "sim-mid" if q else ",".join(models.SIM_SHAPES)
    sims = (args.sims if args.sims is not None else default_sims).split(",")
    for text in args.sim:
        fixed_ms, per_row_ms = (float(v) for v in text.split(","))
        sims.append(models.sim_spec(fixed_ms, per_row_ms).name)
    args.sims = list(dict.fromkeys(s for s in sims if s))
    args.real = [m for m in args.models.split(",") if m]
    args.models = args.sims + args.real  # every model served, sims first (plot.py and the report read it)
    for name in args.models:
        try:
            models.spec_of(name)
        except KeyError as err:
            parser.error(str(err))
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.protocols = (args.protocols or ("rest" if q else "rest,grpc")).split(",")
    args.duration = args.duration or (1.5 if q else 4.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if q else 1.0)
    # What run_suite, measure, report.markdown and plot read, fixed for this benchmark.
    args.rows, args.servers = [1], ["floor", "ours", "peer"]
    args.ours, args.peer = ["batched"], ["batched", "unbatched"]
    args.perf_analyzer, args.perf_analyzer_on = False, []
    return args


def run_pass(args: argparse.Namespace, pinned: bool, tag: str) -> str:
    """Every model and server once, with or without pinning; writes <tag>.md/.json/.png, returns the
    summary tables."""
    started, t0 = time.strftime("%Y-%m-%d %H:%M:%S %Z"), time.monotonic()
    source, waking = ours_source(), wake.describe()
    args.no_pin = not pinned
    server_cpus, client_cpus = split_cpus(args)
    args.server_cpus_used, args.client_cpus_used = server_cpus or "all", client_cpus or "all"
    configs = server_configs(args)
    no_floor = [c for c in configs if c.group != "floor"]
    ideal = (
        [ServerConfig("floor-ideal", "floor", "floor.IdealFloor", None, ideal=True)]
        if args.floor_ideal
        else []
    )

    def configs_of(model: str) -> list:
        # The sims share one payload ([N, 16] in, [N, 10] out): the floor runs once, with the first; the
        # ideal floor (batching that knows its clients, on MLServer's own path) runs with each.
        if model not in args.sims:
            return configs
        return (configs if model == args.sims[0] else no_floor) + ideal

    print(
        f"[dispatch] {tag}: models {args.models}, servers {[c.key for c in configs]}, protocols "
        f"{args.protocols}, concurrency {args.concurrency}, {args.duration:g}+{args.warmup:g} s/point, "
        f"server cores {args.server_cpus_used}, client cores {args.client_cpus_used}",
        flush=True,
    )
    res = run_suite(args, args.models, configs_of, server_cpus, client_cpus)
    sim_specs = {m: models.spec_of(m) for m in args.sims}
    sim = sim_rows(res.points, sim_specs, args.protocols, args.concurrency)
    real = real_rows(res.points, args.real, args.protocols, args.concurrency)
    elapsed = time.monotonic() - t0
    source_end = ours_source()
    tables = "\n".join(sections(sim, real)) + "\n"

    full = markdown(res.points, res.ifaces, [], args, tag, started, configs, res.logs)
    head, _, rest = full.partition("\n## Summary\n")
    head = head.replace("# Benchmark:", "# Dispatch benchmark:", 1)
    head += (
        f"\nPinned: {'yes' if pinned else 'no'}. The floor ran once for every sim shape "
        f"(with `{args.sims[0] if args.sims else '–'}`: same payload). Took {elapsed / 60:.1f} min.\n"
        if args.sims
        else f"\nPinned: {'yes' if pinned else 'no'}. Took {elapsed / 60:.1f} min.\n"
    )
    head += describe_source(source, source_end)
    head += f"\nWaking an idle machine (`benchmarks/wake.py`, the same small torch work): {waking}.\n"
    report = f"{head}\n{tables}\n## Every point: ours against the peer's best and the floor\n{rest}"
    stem = args.out / tag
    args.out.mkdir(parents=True, exist_ok=True)
    Path(f"{stem}.md").write_text(report)
    payload = {
        "tag": tag,
        "started": started,
        "elapsed_s": elapsed,
        "pinned": pinned,
        "ours_source": {"start": source, "end": source_end},
        "waking": waking,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "sim": sim,
        "real": real,
        "points": [asdict(p) for p in res.points],
        "interfaces": res.ifaces,
        "server_logs": res.logs,
    }
    Path(f"{stem}.json").write_text(json.dumps(no_nan(payload), indent=1, default=str, allow_nan=False))
    bounds: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for r in sim:
        bounds.setdefault((r["model"], r["protocol"]), []).append((r["concurrency"], r["bound_rps"]))
    # The floor's req/s dwarfs the sims' (it is in the bound, as f): their panels leave it out.
    shown = [p for p in res.points if not (p.server == "floor" and p.model in args.sims)]
    problem = plot(shown, args, tag, Path(f"{stem}.png"), bounds)
    wrote = f"[dispatch] wrote {stem}.md, {stem}.json" + (f"; {problem}" if problem else f", {stem}.png")
    return f"# {tag} (pinned: {'yes' if pinned else 'no'}, {elapsed / 60:.1f} min)\n\n{tables}\n{wrote}\n"


def ours_source() -> dict[str, Any]:
    """Which mlserver_torchflow "ours" runs (BENCH_OURS_SRC or this checkout, its commit) and a digest of
    its sources: each server imports the tree afresh, so an edit made in the same checkout during a run
    shows up as a changed digest between the start and the end of the run."""
    root = Path(os.environ.get("BENCH_OURS_SRC") or REPO)
    files = sorted((root / "mlserver_torchflow").rglob("*.py"))
    digest = hashlib.sha1()
    for f in files:
        digest.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes())
    info: dict[str, Any] = {
        "path": str(root),
        "digest": digest.hexdigest()[:12],
        "commit": "",
        "dirty": False,
    }
    if root == REPO:  # an exported tree elsewhere (git archive) has no commit of its own to ask git for
        git = ["git", "-C", str(REPO)]
        try:
            info["commit"] = subprocess.run(
                [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
            ).stdout.strip()
            status = [*git, "status", "--porcelain", "--", "mlserver_torchflow"]
            info["dirty"] = bool(subprocess.run(status, capture_output=True, text=True).stdout.strip())
        except (OSError, subprocess.CalledProcessError):
            pass
    return info


def describe_source(start: dict, end: dict) -> str:
    """Which runtime ours was, and whether the checkout changed under the run (as it can, shared)."""
    where = f"commit {start['commit']}" if start["commit"] else start["path"]
    text = (
        f"\nOurs ran mlserver_torchflow from {where}"
        + (" with uncommitted changes" if start["dirty"] else "")
        + f" (sources digest {start['digest']}"
    )
    if end["digest"] == start["digest"]:
        return text + ", unchanged to the end).\n"
    return text + (
        f"). **Its sources changed during the run** (digest {end['digest']} at the end, "
        f"commit {end['commit'] or '?'}): servers started later ran other code.\n"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    base = args.tag or (machine_tag() + "-dispatch" + ("-quick" if args.quick else ""))
    summaries = []
    for pinned in {"off": [False], "on": [True], "both": [False, True]}[args.pin]:
        summaries.append(run_pass(args, pinned, f"{base}-pinned" if pinned else base))
    print()
    print("\n".join(summaries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
