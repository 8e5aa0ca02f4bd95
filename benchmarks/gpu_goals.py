"""The GPU suite's goals (issue 6, item 6) and what limits each model, from the measured figures.

Every goal is read over gRPC at the first `--rows`, with ours batching on ("ours-batched"):
1. end-to-end rows/s at the top concurrency >= 0.85x the raw forward's rows/s at the batch size the server
   really ran (the mean of `torchflow_batch_rows` over the window, interpolated on log2(batch) between
   the measured sizes);
2. batching on >= 4x batching off ("ours-unbatched"), at the top concurrency;
3. >= 3x the peer's best configuration there (the peer has no dtype setting: its FP32 figure for the same
   format is used for FP16 too);
4. p99 at the lowest concurrency (1) within 1 ms of the raw forward's p99 at that batch size.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import numpy as np

NAN = float("nan")


def window_stats(edges: dict[str, dict[str, float]], duration: float) -> dict[str, float]:
    """Our batcher over one window: deltas of its histograms (sum, count) between the window's edges."""
    a, b = edges.get("start", {}), edges.get("end", {})

    def delta(name: str) -> float:
        return b[name] - a.get(name, 0.0) if name in b else NAN

    batches = delta("torchflow_batch_rows_count")
    waits = delta("torchflow_queue_wait_seconds_count")
    return {
        "mean_batch": delta("torchflow_batch_rows_sum") / batches if batches else NAN,
        "batches_per_s": batches / duration,
        # from submit to the executor thread's return: includes waiting behind the batch before it
        "compute_ms": 1e3 * delta("torchflow_compute_seconds_sum") / batches if batches else NAN,
        "queue_wait_ms": 1e3 * delta("torchflow_queue_wait_seconds_sum") / waits if waits else NAN,
    }


def raw_at(raw: dict[str, dict[str, float]], batch: float, key: str = "rows_per_s") -> float:
    """`key` of the raw figures at `batch` rows, interpolated on log2(batch) between measured sizes."""
    sizes = sorted(int(s) for s in raw)
    if not sizes or math.isnan(batch):
        return NAN
    values = [raw[str(s)][key] for s in sizes]
    return float(np.interp(math.log2(max(batch, 1)), [math.log2(s) for s in sizes], values))


def find(
    points: list[dict[str, Any]], model: str, server: str, rows: int, conc: int
) -> dict[str, Any] | None:
    """The gRPC point of `server` serving `model`, with replies; `server` "peer" means the peer's best."""
    found = [
        p
        for p in points
        if p["model"] == model
        and (p["server"] == server or (server == "peer" and p.get("group") == "peer"))
        and p.get("protocol") == "grpc"
        and p["rows"] == rows
        and p["concurrency"] == conc
        and p["ok"] > 0
    ]
    return max(found, key=lambda p: p["rows_per_s"], default=None)


def goals(
    args: argparse.Namespace, runs: list[dict[str, Any]], points: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    top, low, rows = max(args.concurrency), min(args.concurrency), args.rows[0]
    out = []
    for run in runs:
        name, fwd = run["name"], run["forward"]
        on, off = (
            find(points, name, "ours-batched", rows, top),
            find(points, name, "ours-unbatched", rows, top),
        )
        peer = find(points, f"{run['model']}-{run['format']}-fp32", "peer", rows, top)
        on1 = find(points, name, "ours-batched", rows, low)
        rate = on["rows_per_s"] if on else NAN
        raw_rate = raw_at(fwd, on["mean_batch"]) if on else NAN
        checks = [
            (f"e2e / raw forward at the executed batch, c={top}", rate / raw_rate, ">= 0.85x", "x"),
            (f"batching on / off, c={top}", rate / off["rows_per_s"] if off else NAN, ">= 4x", "x"),
            (
                f"ours / mlserver-mlflow best, c={top}",
                rate / peer["rows_per_s"] if peer else NAN,
                ">= 3x",
                "x",
            ),
            (f"p99 c={low} minus raw forward p99 (batch {rows})", NAN, "<= 1 ms", " ms"),
        ]
        if on1:
            checks[3] = (checks[3][0], on1["p99_ms"] - raw_at(fwd, rows, "p99_ms"), "<= 1 ms", " ms")
        details = [
            f"{rate:,.0f} vs {raw_rate:,.0f} rows/s at batch {on['mean_batch']:.1f}" if on else "",
            "",
            f"peer: {peer['server']} on {run['format']} fp32, {peer['rows_per_s']:,.0f} rows/s"
            if peer
            else "",
            f"ours p99 {on1['p99_ms']:.2f} ms" if on1 else "",
        ]
        for i, ((goal, value, target, unit), detail) in enumerate(zip(checks, details)):
            met = value <= 1.0 if i == 3 else value >= (0.85, 4.0, 3.0)[i]
            verdict = "not measured" if math.isnan(value) else ("met" if met else "missed")
            out.append(
                {
                    "model": name,
                    "goal": goal,
                    "value": value,
                    "unit": unit,
                    "target": target,
                    "verdict": verdict,
                    "detail": detail,
                }
            )
    return out


def limits(
    args: argparse.Namespace, runs: list[dict[str, Any]], points: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Per model, ours-batched at the top concurrency: which resource ran out (a heuristic, see README)."""
    top, rows = max(args.concurrency), args.rows[0]
    out = []
    for run in runs:
        on = find(points, run["name"], "ours-batched", rows, top)
        if on is None:
            continue
        floor = find(points, run["model"], "floor", rows, top)
        busy = on["batches_per_s"] * raw_at(run["runtime_pass"], on["mean_batch"], "mean_ms") / 1e3
        real = on["rows_per_s"] / on["batches_per_s"] if on["batches_per_s"] else NAN
        if on["client_cpu"] >= 0.9 * max(1, min(args.client_procs, top)):
            verdict = "the client (its cores are saturated): the figure is a lower bound"
        elif busy >= 0.8:
            verdict = f"the forward pass (the device thread is ~{busy:.0%} busy)"
        elif on["server_cpu"] >= 0.9 and not args.device.startswith("cuda"):
            verdict = "the server's cores (on a CPU the forward pass and the Python share them)"
        elif on["server_cpu"] >= 0.9:
            verdict = "the server's Python (one event loop: gRPC, MLServer, codec, batcher; see --profile)"
        else:
            verdict = "neither side saturated: waiting (batching window, round trips)"
        out.append(
            {
                "model": run["name"],
                "server_cpu": on["server_cpu"],
                "client_cpu": on["client_cpu"],
                "batches_per_s": on["batches_per_s"],
                "mean_batch": on["mean_batch"],
                "padding": 1 - real / on["mean_batch"] if on["mean_batch"] else NAN,
                "forward_busy": busy,
                "floor_req_s": floor["rps"] if floor else NAN,
                "limit": verdict,
            }
        )
    return out
