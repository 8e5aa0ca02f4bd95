"""The loop that run.py and dispatch.py share: for each model, each server alone (start, probe, every point,
stop), a server that dies under load restarted for the next point, so that both measure the same way."""

from __future__ import annotations

import argparse
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import models as model_defs
from measure import BUSY_CORES, Point, measure, wait_quiet
from perf_analyzer import perf_analyzer
from probe import load_reference, probe
from report import fmt
from servers import ServerConfig, record_death, scan_log, start_server

from mlserver_torchflow.common import first_line


@dataclass
class Results:
    points: list[Point] = field(default_factory=list)
    ifaces: dict[str, dict[str, Any]] = field(default_factory=dict)
    perf_analyzer: list[dict[str, Any]] = field(default_factory=list)
    logs: dict[str, dict[str, Any]] = field(default_factory=dict)
    waited_s: float = 0.0  # spent waiting for a busy machine to go quiet, against args.retry_budget_s


def run_suite(
    args: argparse.Namespace,
    models: list[str],
    configs_of: Callable[[str], list[ServerConfig]],
    server_cpus: list[int] | None,
    client_cpus: list[list[int]] | None,
    res: Results | None = None,
) -> Results:
    """Every point of `configs_of(model)` for each model, at args.protocols × rows × concurrency."""
    res = res if res is not None else Results()
    for model in models:
        spec = model_defs.spec_of(model)
        model_path = model_defs.save(spec)
        reference = load_reference(model_path)
        for cfg in configs_of(model):
            _one_server(args, res, model, spec, model_path, reference, cfg, server_cpus, client_cpus)
    return res


def _extra(cfg: ServerConfig, spec: Any) -> dict[str, Any] | None:
    """The ideal floor's simulated device: its fixed and per-row seconds."""
    return {"fixed_s": spec.fixed, "per_row_s": spec.per_row} if cfg.ideal else None


def dispatch_of(server: Any, model: str) -> str:
    """Our batcher's account of itself (model metadata `torchflow.dispatch`): how it found the device
    and which arrangement of the clients it runs, so that a point records what served it."""
    status, meta = server.get(f"/v2/models/{model}")
    params = meta.get("parameters") if status == 200 and isinstance(meta, dict) else None
    return str((params or {}).get("torchflow.dispatch", ""))


def _grid(args: argparse.Namespace) -> list[tuple[str, int, int]]:
    return [(p, r, c) for p in args.protocols for r in args.rows for c in args.concurrency]


def _one_server(
    args: argparse.Namespace,
    res: Results,
    model: str,
    spec: Any,
    model_path: Any,
    reference: Any,
    cfg: ServerConfig,
    server_cpus: list[int] | None,
    client_cpus: list[list[int]] | None,
) -> None:
    key = f"{model}/{cfg.key}"
    deaths: list[dict[str, Any]] = []
    print(f"[bench] starting {key}", flush=True)
    try:
        server = start_server(cfg, model, model_path, server_cpus, spec.row_shape, _extra(cfg, spec))
    except Exception as err:
        res.ifaces[key] = {"error": f"did not start: {first_line(err, 200)}"}
        print(f"[bench] {key} did not start: {err}", flush=True)
        for proto, rows, conc in _grid(args):
            why = f"server did not start: {first_line(err, 200)}"
            res.points.append(Point(model, cfg.key, cfg.group, proto, rows, conc, failed=why))
        return
    mark = 0
    try:
        try:
            iface = probe(server, cfg, model, spec, reference, args.protocols, args.rows)
            res.ifaces[key] = asdict(iface)
        except Exception as err:
            res.ifaces[key] = {"error": f"probe failed: {first_line(err, 200)}"}
            print(f"[bench] {key} probe failed: {err}", flush=True)
            iface = None
        mark = len(server.log())
        for proto, rows, conc in _grid(args):
            point = Point(model, cfg.key, cfg.group, proto, rows, conc)
            if iface is not None and server.proc is not None and server.proc.poll() is not None:
                # It died during the previous point: keep its log, start it again, go on.
                death = record_death(server, mark, f"{proto} rows={rows} conc={conc}")
                deaths.append(death)
                print(
                    f"[bench] {key} had exited ({death['exit_code']}); restarting. Its last "
                    f"log lines:\n    " + "\n    ".join(death["log_tail"][-8:]),
                    flush=True,
                )
                try:
                    server = start_server(
                        cfg, model, model_path, server_cpus, spec.row_shape, _extra(cfg, spec)
                    )
                    mark = 0
                except Exception as err:
                    iface = None
                    res.ifaces[key] = {"error": f"did not restart: {first_line(err, 200)}"}
            if iface is None:
                point.failed = point.failed or res.ifaces[key]["error"]
            retries = getattr(args, "retry_busy", 0)
            for attempt in range(retries + 1 if iface is not None else 0):
                # A neighbour busy during the window skews the point: once it is quiet, measure again.
                point = Point(model, cfg.key, cfg.group, proto, rows, conc, retries=attempt)
                try:
                    ref = None if cfg.group == "floor" else reference
                    measure(point, server, iface, spec, ref, args, client_cpus)
                    point.dispatch = dispatch_of(server, model) if cfg.group == "ours" else ""
                except Exception as err:
                    point.failed = f"harness error: {first_line(err, 200)}"
                    traceback.print_exc()
                    break
                budget = getattr(args, "retry_budget_s", 300.0) - res.waited_s
                if not point.other_cpu > BUSY_CORES or attempt == retries or budget <= 0:
                    break
                print(
                    f"[bench]   busy machine ({point.other_cpu:.2f} other cores): again when quiet",
                    flush=True,
                )
                t0 = time.monotonic()
                wait_quiet(min(60.0, budget))
                res.waited_s += time.monotonic() - t0
            res.points.append(point)
            print(
                f"[bench]   {model:10s} {cfg.key:16s} {proto:4s} rows={rows:<3d} conc={conc:<3d} "
                f"{fmt(point.rps):>7s} req/s  p50 {fmt(point.p50_ms, 2):>7s} ms  "
                f"p99 {fmt(point.p99_ms, 2):>7s} ms  err {point.errors} wrong {point.wrong}  "
                f"{f'(measured {point.retries + 1}x) ' if point.retries else ''}"
                f"client {fmt(point.client_cpu, 2)} server {fmt(point.server_cpu, 2)} cores"
                f"{'  FAILED: ' + point.failed[:200] if point.failed else ''}",
                flush=True,
            )
        if (
            getattr(args, "perf_analyzer", False)
            and cfg.group in args.perf_analyzer_on
            and iface is not None
            and "rest" in args.protocols
        ):
            print(f"[bench] perf_analyzer against {key}", flush=True)
            info = perf_analyzer(server, model, spec, iface, args, client_cpus)
            info.update(server=f"{model}-{cfg.key}", model=model, server_config=cfg.key)
            res.perf_analyzer.append(info)
            print(f"[bench]   {info['status']}", flush=True)
    finally:
        if server.proc is not None and server.proc.poll() is not None:
            deaths.append(record_death(server, mark, "the end (it died in the last point)"))
        server.stop()
        res.logs[key] = scan_log(server, mark)
        res.logs[key]["deaths"] = deaths
