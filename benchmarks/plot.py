"""The run's figure: throughput and p99 against concurrency, one panel per model, protocol and row count
(with an ideal bound's line where the caller has one, as dispatch.py does); matplotlib is optional, so its
absence costs the figure only."""

from __future__ import annotations

import argparse
from pathlib import Path

from measure import Point


def plot(
    points: list[Point],
    args: argparse.Namespace,
    tag: str,
    path: Path,
    bounds: dict[tuple[str, str], list[tuple[int, float]]] | None = None,
) -> str | None:
    """`bounds`: (model, protocol) -> [(concurrency, req/s)], drawn black on the throughput panels."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed in this venv (pip install matplotlib): no plot"
    models = [m for m in args.models if any(p.model == m for p in points)]
    panels = [(proto, rows) for proto in args.protocols for rows in args.rows]
    if not models or not panels:
        return "nothing to plot"
    fig, axes = plt.subplots(
        2 * len(models), len(panels), figsize=(4.2 * len(panels), 3.4 * 2 * len(models)), squeeze=False
    )
    servers = list(dict.fromkeys(p.server for p in points))
    styles = {"ours": "-", "peer": "--", "floor": ":"}
    colors = {s: f"C{i}" for i, s in enumerate(servers)}  # the same colour for a server in every panel
    for mi, model in enumerate(models):
        for ci, (proto, rows) in enumerate(panels):
            top, bottom = axes[2 * mi][ci], axes[2 * mi + 1][ci]
            for server in servers:
                series = sorted(
                    (
                        p
                        for p in points
                        if p.model == model
                        and p.server == server
                        and p.protocol == proto
                        and p.rows == rows
                        and p.ok > 0
                    ),
                    key=lambda p: p.concurrency,
                )
                if not series:
                    continue
                conc = [p.concurrency for p in series]
                group = series[0].group
                style = {"linestyle": styles[group], "marker": "o", "color": colors[server], "label": server}
                top.plot(conc, [p.rps for p in series], **style)
                bottom.plot(conc, [p.p99_ms for p in series], **style)
            bound = (bounds or {}).get((model, proto))
            if bound and rows == 1:
                xs, ys = zip(*sorted(bound))
                top.plot(xs, ys, linestyle="-.", marker="x", color="black", label="ideal-device bound")
            top.set_title(f"{model} · {proto} · {rows} row{'s' if rows > 1 else ''}")
            for ax in (top, bottom):
                ax.set_xscale("log", base=2)
                ax.set_xticks(args.concurrency, [str(c) for c in args.concurrency])
                ax.grid(True, alpha=0.3)
            top.set_ylabel("throughput (req/s)")
            bottom.set_ylabel("p99 latency (ms)")
            bottom.set_xlabel("concurrency")
            bottom.set_yscale("log")
            top.set_ylim(bottom=0)
    handles: dict[str, object] = {}  # every series once, though the first panel may lack some (the floor)
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    axes[0][0].legend(list(handles.values()), list(handles), fontsize=8)
    fig.suptitle(f"{tag}{' (quick trial, indicative only)' if args.quick else ''}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
