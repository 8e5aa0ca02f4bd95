"""The run's Markdown report (and the JSON's NaN as null): the summary ratios of ours against the peer and
the floor, then every point, interface and server log, so a figure can be traced to what produced it."""

from __future__ import annotations

import argparse
import math
import os
import platform
import re
from pathlib import Path
from typing import Any

from measure import Point
from servers import ServerConfig

# ------------------------------------------------------------------------------------------------ machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown-cpu"


def machine_tag() -> str:
    model = re.sub(r"\((R|TM|tm|r)\)|CPU|Processor|\d+-Core|@.*$", "", cpu_model())
    model = re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")[:40] or "cpu"
    return f"{platform.machine()}-{len(os.sched_getaffinity(0))}cpu-{model}"


# ------------------------------------------------------------------------------------------------ report


def fmt(v: float, digits: int = 0) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:,.{digits}f}"


def ratio(a: float, b: float) -> str:
    if any(x is None or (isinstance(x, float) and math.isnan(x)) for x in (a, b)) or b == 0:
        return "–"
    return f"{a / b:.2f}×"


def best_of(points: list[Point]) -> Point | None:
    usable = [p for p in points if p.ok > 0]
    return max(usable, key=lambda p: p.rps) if usable else None


def summary_rows(points: list[Point], args: argparse.Namespace) -> list[dict[str, Any]]:
    keyed: dict[tuple[str, str, int, int], list[Point]] = {}
    for p in points:
        keyed.setdefault((p.model, p.protocol, p.rows, p.concurrency), []).append(p)
    rows = []
    for (model, protocol, nrows, conc), group in keyed.items():
        ours = next((p for v in args.ours for p in group if p.server == f"ours-{v}" and p.ok > 0), None)
        peer = best_of([p for p in group if p.group == "peer"])
        floor = next((p for p in group if p.server == "floor"), None)
        bad = sum(p.errors + p.wrong for p in group) + sum(1 for p in group if p.failed)
        rows.append(
            {
                "model": model,
                "protocol": protocol,
                "rows": nrows,
                "concurrency": conc,
                "ours": ours,
                "peer": peer,
                "floor": floor,
                "problems": bad,
            }
        )
    return rows


def markdown(
    points: list[Point],
    ifaces: dict[str, dict[str, Any]],
    pa: list[dict[str, Any]],
    args: argparse.Namespace,
    tag: str,
    started: str,
    configs: list[ServerConfig],
    server_logs: dict[str, dict[str, Any]],
) -> str:
    out = [f"# Benchmark: {tag}", ""]
    out.append(
        f"Run {started}; {len(os.sched_getaffinity(0))} CPUs ({cpu_model()}); "
        f"{args.duration:g} s per point after {args.warmup:g} s warm-up; client: {args.client_mode}, "
        f"{args.client_procs} process(es); server cores {args.server_cpus_used}, client cores "
        f"{args.client_cpus_used}. Servers: " + "; ".join(c.label() for c in configs) + "."
    )
    if args.quick:
        out.append("")
        out.append("**Quick trial**: short points on a shared machine; the figures are indicative only.")
    out += [
        "",
        "## Summary",
        "",
        "Throughput in requests/s (rows/s = requests/s × rows); latency p50 / p99 in ms. "
        "`peer-best` is whichever peer configuration had the higher throughput at that point (named in "
        "`peer cfg`). Ratios are throughput ratios (>1: ours is faster) except `p99 ours/peer` (<1: ours "
        "has the lower tail).",
        "",
    ]
    out.append(
        "| model | proto | rows | conc | ours req/s | ours rows/s | ours p50 / p99 | peer-best req/s "
        "| peer p50 / p99 | peer cfg | floor req/s | floor p50 / p99 | ours/peer | ours/floor "
        "| p99 ours/peer | problems |"
    )
    out.append("|" + "---|" * 16)
    for r in summary_rows(points, args):
        o, p, f = r["ours"], r["peer"], r["floor"]

        def tp(x: Point | None) -> str:
            return fmt(x.rps) if x else "–"

        def lat(x: Point | None) -> str:
            return f"{fmt(x.p50_ms, 1)} / {fmt(x.p99_ms, 1)}" if x else "–"

        out.append(
            f"| {r['model']} | {r['protocol']} | {r['rows']} | {r['concurrency']} | {tp(o)} "
            f"| {fmt(o.rows_per_s) if o else '–'} | {lat(o)} | {tp(p)} | {lat(p)} "
            f"| {p.server.removeprefix('peer-') if p else '–'} | {tp(f)} | {lat(f)} "
            f"| {ratio(o.rps, p.rps) if o and p else '–'} | {ratio(o.rps, f.rps) if o and f else '–'} "
            f"| {ratio(o.p99_ms, p.p99_ms) if o and p else '–'} | {r['problems'] or ''} |"
        )
    if "ours" in args.servers:
        out += ["", f"`ours` is `ours-{args.ours[0]}` (the first of --ours) where it has results."]

    out += [
        "",
        "## Every configuration",
        "",
        "`client cpu` / `server cpu`: cores busy during the measurement window (1.00 = one full core). "
        "A client near 1.00 per client process means the client, not the server, may be the limit at that "
        "point; the server near its core count means the server is saturated. `client µs/req`: client CPU "
        "per reply (1,000,000 / it = the most req/s one client core could drive). `req/server cpu-s`: good "
        "replies per second of server CPU, an efficiency figure that a busy machine distorts less than req/s. "
        "`other cpu`: cores the rest of the machine used meanwhile (the parent harness's own sleep is near "
        "0; more than a few tenths means a busy neighbour, and a noisy point).",
        "",
    ]
    out.append(
        "| model | server | proto | rows | conc | req/s | rows/s | p50 ms | p90 ms | p99 ms | ok | errors "
        "| wrong | client cpu | client µs/req | server cpu | other cpu | req/server cpu-s | note |"
    )
    out.append("|" + "---|" * 19)
    for p in points:
        note = p.failed or "; ".join(p.samples)
        note = note.replace("|", "\\|").replace("\n", " ")[:200]
        out.append(
            f"| {p.model} | {p.server} | {p.protocol} | {p.rows} | {p.concurrency} | {fmt(p.rps)} "
            f"| {fmt(p.rows_per_s)} | {fmt(p.p50_ms, 2)} | {fmt(p.p90_ms, 2)} | {fmt(p.p99_ms, 2)} | {p.ok} "
            f"| {p.errors} | {p.wrong} | {fmt(p.client_cpu, 2)} | {fmt(p.client_us_per_req)} "
            f"| {fmt(p.server_cpu, 2)} | {fmt(p.other_cpu, 2)} | {fmt(p.req_per_server_cpu_s)} | {note} |"
        )

    out += [
        "",
        "## Interfaces seen",
        "",
        "Input name from `GET /v2/models/<name>` (first input); output names as listed in metadata and as "
        "found in real replies.",
        "",
    ]
    for key, info in ifaces.items():
        if "error" in info:
            out.append(f"- **{key}**: could not be probed: {info['error']}")
            continue
        meta_in = ", ".join(
            f"{t['name']} {t.get('datatype')} {t.get('shape')}" for t in info["metadata_inputs"]
        )
        meta_out = ", ".join(
            f"{t['name']} {t.get('datatype')} {t.get('shape')}" for t in info["metadata_outputs"]
        )
        replies = "; ".join(f"{proto}: {names}" for proto, names in info["reply_outputs"].items())
        out.append(
            f"- **{key}**: metadata inputs [{meta_in}], outputs [{meta_out}]; reply outputs {replies}."
        )
        for note in info["notes"]:
            out.append(f"  - {note}")

    if server_logs:
        out += [
            "",
            "## Server logs",
            "",
            "Counted from the end of the probe requests (which send a few malformed "
            "requests on purpose) to the server's stop.",
            "",
        ]
        for key, log in server_logs.items():
            for death in log.get("deaths", []):
                out.append(
                    f"- **{key}**: **the server exited (code {death['exit_code']}) under load**, found "
                    f"before the point {death['before_point']}; restarted. Log: `{death['log']}`; last "
                    "lines: `" + " ⏎ ".join(death["log_tail"][-6:])[:600].replace("`", "'") + "`"
                )
            out.append(
                f"- **{key}**: {log['errors']} ERROR/Traceback line(s)"
                + (f"; first: `{log['first'][:300]}`" if log["first"] else "")
                + f"; {log['warnings']} WARNING line(s)"
                + (f"; first: `{log['first_warning'][:300]}`" if log["first_warning"] else "")
                + f" (log: `{log['path']}`)"
            )

    if args.perf_analyzer:
        out += ["", "## perf_analyzer (Triton), HTTP, JSON tensors", ""]
        if not pa:
            out.append("Not run (no server of the target group ran).")
        for info in pa:
            out.append(f"**{info['server']}**: {info.get('status')}")
            if info.get("perf_analyzer_says"):
                said = info["perf_analyzer_says"].strip().splitlines()
                out.append("")
                out.append("perf_analyzer said:")
                out.append("```")
                out += said[:15]
                out.append("```")
            if info.get("runs"):
                out += [
                    "",
                    "| rows | conc | infer/s | p50 ms | p90 ms | p99 ms | harness req/s at the point "
                    "| note |",
                    "|---|---|---|---|---|---|---|---|",
                ]
                for run in info["runs"]:
                    ours = next(
                        (
                            p
                            for p in points
                            if p.server == info["server_config"]
                            and p.model == info["model"]
                            and p.protocol == "rest"
                            and p.rows == run["rows"]
                            and p.concurrency == run["concurrency"]
                        ),
                        None,
                    )
                    out.append(
                        f"| {run['rows']} | {run['concurrency']} | {fmt(run.get('infer_per_s', float('nan')))} "
                        f"| {fmt(run.get('p50_ms', float('nan')), 2)} | {fmt(run.get('p90_ms', float('nan')), 2)} "
                        f"| {fmt(run.get('p99_ms', float('nan')), 2)} | {fmt(ours.rps) if ours else '–'} "
                        f"| {str(run.get('error', '')).strip().splitlines()[-1:] if run.get('error') else ''} |"
                    )
            out.append("")
    return "\n".join(out) + "\n"


def no_nan(value: Any) -> Any:
    """NaN (no measurement) as JSON null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: no_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [no_nan(v) for v in value]
    return value
