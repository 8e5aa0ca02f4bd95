"""The GPU suite's report: <tag>.md (goals, limits, every point, raw figures, profiles), .json, .png."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
from gpu_goals import NAN, find, goals, limits, raw_at
from report import cpu_model, fmt, no_nan

COLUMNS = (
    "`rows/s`: good replies per second x rows; `mean batch`: rows per forward pass the server ran over "
    "the window (padding included), from `torchflow_batch_rows`; `compute ms/batch`: submit to return on "
    "the executor thread (so it includes waiting behind the batch ahead); `queue wait ms`: arrival to the "
    "start of the request's batch; `server cpu` / `client cpu`: cores busy in the window."
)


def point_line(p: dict[str, Any]) -> str:
    return (
        f"[gpu]   {p['model']:24s} {p['server']:15s} {p['protocol']} rows={p['rows']} c={p['concurrency']:<3d}"
        f" {fmt(p['rows_per_s'], 1):>8s} rows/s p50 {fmt(p['p50_ms'], 2)} p99 {fmt(p['p99_ms'], 2)} ms"
        f" batch {fmt(p['mean_batch'], 1)} ok {p['ok']} err {p['errors']} wrong {p['wrong']} {p['failed']}"
    )


def machine_tag(info: dict[str, str]) -> str:
    """`<arch>-<gpu>` (e.g. x86_64-h100-80gb-hbm3), or `<arch>-<N>cpu` without one."""
    if "gpu" in info:
        return f"{platform.machine()}-" + "-".join(info["gpu"].lower().replace("nvidia", "").split())
    return f"{platform.machine()}-{len(os.sched_getaffinity(0))}cpu"


def machine(device: str, runs: list[dict[str, Any]]) -> dict[str, str]:
    """The machine, named in the report. The GPU's name comes from the raw process: this one never
    touches CUDA (a context here would hold device memory through every server's run)."""
    import torch

    info = {
        "device": device,
        "cpus": f"{len(os.sched_getaffinity(0))} ({cpu_model()})",
        "torch": torch.__version__,
    }
    if device.startswith("cuda"):
        info["gpu"] = next((r["device_name"] for r in runs if r.get("device_name")), "unknown")
        info["cuda"] = str(torch.version.cuda)
        try:
            smi = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
            info["driver"] = subprocess.run(smi, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            info["driver"] = "unknown (no nvidia-smi)"
    return info


def markdown(
    args: argparse.Namespace,
    tag: str,
    started: str,
    info: dict[str, str],
    runs: list[dict[str, Any]],
    points: list[dict[str, Any]],
    notes: list[str],
) -> str:
    out = [
        f"# GPU suite: {tag}",
        "",
        f"Run {started}. Machine: " + "; ".join(f"{k} {v}" for k, v in info.items()) + ".",
    ]
    out += [
        "",
        f"Scale {args.scale}; {args.duration:g} s per point after {args.warmup:g} s; closed loop over "
        f"{', '.join(args.protocols)}, {args.rows} row(s) per request, concurrency {args.concurrency}; ours "
        f"batched (max_batch_size,max_batch_time) {args.ours_batch}, preferred_batch_sizes "
        f"{args.preferred or 'none'}; peer batched {args.peer_batch}. Server cores {args.server_cpus_used}, "
        f"client cores {args.client_cpus_used}.",
    ]
    out += [f"\n**Note**: {n}" for n in notes]
    out += [
        "",
        "## Goals",
        "",
        "| model | goal | measured | target | verdict | detail |",
        "|---|---|---|---|---|---|",
    ]
    for g in goals(args, runs, points):
        out.append(
            f"| {g['model']} | {g['goal']} | {fmt(g['value'], 2)}{g['unit']} | {g['target']} | {g['verdict']} | {g['detail']} |"
        )
    out += [
        "",
        f"## What limits it (ours-batched, concurrency {max(args.concurrency)})",
        "",
        "`forward busy` = batches/s x the raw runtime pass's mean time at the mean batch: the share of the "
        "window the device thread needed. `padding` = share of executed rows that were padding. "
        "`floor req/s`: MLServer answering at once, same payload and concurrency. `limit` is a heuristic.",
        "",
        "| model | server cpu | client cpu | batches/s | mean batch | padding | forward busy | floor req/s | limit |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for lim in limits(args, runs, points):
        out.append(
            f"| {lim['model']} | {fmt(lim['server_cpu'], 2)} | {fmt(lim['client_cpu'], 2)} | {fmt(lim['batches_per_s'])} "
            f"| {fmt(lim['mean_batch'], 1)} | {fmt(100 * lim['padding'])}% | {fmt(100 * lim['forward_busy'])}% "
            f"| {fmt(lim['floor_req_s'])} | {lim['limit']} |"
        )
    out += ["", "## Served", "", COLUMNS, ""]
    out.append(
        "| model | server | proto | rows | conc | rows/s | p50 ms | p99 ms | ok | errors | wrong | mean batch | compute ms/batch | queue wait ms | server cpu | client cpu | note |"
    )
    out.append("|" + "---|" * 17)
    for p in points:
        note = (p["failed"] or "; ".join(p["samples"])).replace("|", "\\|").replace("\n", " ")[:200]
        out.append(
            f"| {p['model']} | {p['server']} | {p['protocol']} | {p['rows']} | {p['concurrency']} | {fmt(p['rows_per_s'])} "
            f"| {fmt(p['p50_ms'], 2)} | {fmt(p['p99_ms'], 2)} | {p['ok']} | {p['errors']} | {p['wrong']} "
            f"| {fmt(p['mean_batch'], 1)} | {fmt(p['compute_ms'], 2)} | {fmt(p['queue_wait_ms'], 2)} "
            f"| {fmt(p['server_cpu'], 2)} | {fmt(p['client_cpu'], 2)} | {note} |"
        )
    out += [
        "",
        "## Raw in-process forward",
        "",
        "`forward`: `module(x)`, x already on the device; `runtime pass`: the runtime's Predictor.run, numpy in "
        "and out (host copies included). Each call is followed by a device synchronise.",
        "",
        "| model | batch | forward rows/s | forward p50 / p99 ms | runtime pass rows/s | runtime pass p50 / p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for run in runs:
        for b, f in run["forward"].items():
            r = run["runtime_pass"][b]
            out.append(
                f"| {run['name']} | {b} | {fmt(f['rows_per_s'])} | {fmt(f['p50_ms'], 2)} / {fmt(f['p99_ms'], 2)} "
                f"| {fmt(r['rows_per_s'])} | {fmt(r['p50_ms'], 2)} / {fmt(r['p99_ms'], 2)} |"
            )
    profiles = [
        (r["name"], "torch.profiler, runtime pass at the largest batch", r["profile"])
        for r in runs
        if r.get("profile")
    ]
    profiles += [
        (p["model"], "cProfile of the server's main thread, ours-batched", p["cprofile"])
        for p in points
        if p.get("cprofile")
    ]
    if profiles:
        out += ["", "## Profiles", ""]
        for name, what, text in profiles:
            out += [f"**{name}**: {what}", "", "```", text.rstrip(), "```", ""]
    return "\n".join(out) + "\n"


def plot(
    args: argparse.Namespace, runs: list[dict[str, Any]], points: list[dict[str, Any]], path: Path
) -> str:
    """Two panels: rows/s at the top concurrency, p99 at the lowest; raw forward beside each server."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot"
    top, low, rows = max(args.concurrency), min(args.concurrency), args.rows[0]
    names = [r["name"] for r in runs]
    fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 1.4 * len(names)) * 2, 5), squeeze=False)
    series = ("raw forward", "ours-batched", "ours-unbatched", "peer")
    for ax, conc, key in ((axes[0][0], top, "rows_per_s"), (axes[0][1], low, "p99_ms")):
        for i, label in enumerate(series):
            values = []
            for run in runs:
                if label == "raw forward":
                    ours = find(points, run["name"], "ours-batched", rows, conc)
                    batch = rows if key == "p99_ms" else (ours["mean_batch"] if ours else NAN)
                    values.append(raw_at(run["forward"], batch, key))
                else:
                    model = f"{run['model']}-{run['format']}-fp32" if label == "peer" else run["name"]
                    found = find(points, model, label, rows, conc)
                    values.append(found[key] if found else NAN)
            ax.bar(np.arange(len(names)) + (i - 1.5) * 0.2, values, 0.2, label=label)
        ax.set_xticks(np.arange(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(
            f"rows/s at concurrency {top}" if key == "rows_per_s" else f"p99 ms at concurrency {low}"
        )
        ax.grid(True, axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"gRPC, {rows} row(s) per request; raw forward at the batch ours ran")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return ""


def write(
    args: argparse.Namespace,
    started: str,
    device: str,
    runs: list[dict[str, Any]],
    points: list[dict[str, Any]],
    notes: list[str],
) -> str:
    """Writes <out>/<tag>.md, .json and .png; returns the markdown."""
    info = machine(device, runs)
    tag = args.tag or f"{machine_tag(info)}-gpu-suite{'-tiny' if args.tiny else ''}"
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / tag
    report = markdown(args, tag, started, info, runs, points, notes)
    Path(f"{stem}.md").write_text(report)
    problem = plot(args, runs, points, Path(f"{stem}.png"))
    doc = {
        "tag": tag,
        "started": started,
        "machine": info,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "goals": goals(args, runs, points),
        "limits": limits(args, runs, points),
        "raw": runs,
        "points": points,
    }
    Path(f"{stem}.json").write_text(json.dumps(no_nan(doc), indent=1, default=str, allow_nan=False))
    return (
        report
        + f"\n[gpu] wrote {stem}.md, {stem}.json"
        + (f"; {problem}" if problem else f", {stem}.png")
        + "\n"
    )
