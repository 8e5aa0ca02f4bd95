"""dispatch.py's figures: each point against the throughput an ideal device would allow, so that a batcher's
dispatch policy is judged by what the device's costs permit rather than only against another runtime."""

from __future__ import annotations

import math
from typing import Any

from measure import BUSY_CORES, Point
from report import best_of, fmt, ratio

P50_SLACK = 1.15  # the 1-client target: ours' p50 within 15% of F + R + the floor's p50
NAN = float("nan")


def problems(group: list[Point]) -> str:
    """Failed, erroring or wrong points, and points that a busy neighbour may have skewed."""
    bad = sum(p.errors + p.wrong + bool(p.failed) for p in group)
    busy = [p.other_cpu for p in group if p.other_cpu > BUSY_CORES]
    text = [f"{bad} bad"] if bad else []
    if again := sum(p.retries for p in group):
        text.append(f"{again} re-measured (busy)")
    if busy:
        text.append(f"{len(busy)} of {len(group)} busy (other cpu ≤ {max(busy):.2f})")
    return "; ".join(text)


def _at(points: list[Point], **key: Any) -> list[Point]:
    return [p for p in points if p.rows == 1 and all(getattr(p, k) == v for k, v in key.items())]


def _ours(group: list[Point]) -> Point | None:
    return next((p for p in group if p.group == "ours" and p.ok > 0), None)


def arrangement(dispatch: str) -> str:
    """The clients' arrangement our batcher ran at a point's end, short, from its account of itself
    (`Point.dispatch`, clients.Population.describe): what served the point, recorded, not inferred."""
    if not dispatch:
        return "–"
    trial = " (trial)" if "on trial" in dispatch else ""
    if "groups take turns" in dispatch:
        return "groups" + trial
    if "wait for every client" in dispatch:
        return "all wait" + trial
    if "one group" in dispatch:
        return "one group" + (" (groups refused)" if "did not pay" in dispatch else "")
    return "as they come"


def bound(conc: int, fixed: float, per_row: float, floor_cost: float) -> float:
    """Req/s of an ideal device for `conc` closed-loop clients: one batch of all of them per round, each
    round paying the launch F, R per row and the floor's host cost f per request, nothing overlapped."""
    return conc / (fixed + per_row * conc + conc * floor_cost)


def sim_rows(points: list[Point], sims: dict[str, Any], protocols: list[str], concs: list[int]) -> list[dict]:
    """One row per sim shape, protocol and concurrency. f = 1 / the floor's req/s at the top concurrency,
    from whichever sim model the floor ran with (they share the [N, 16] payload)."""
    floors = [p for p in points if p.server == "floor" and p.model in sims and p.ok > 0]
    ideals = [p for p in points if p.server == "floor-ideal" and p.ok > 0]
    top, rows = max(concs), []
    for model, spec in sims.items():
        fixed, per_row = spec.fixed, spec.per_row
        for proto in protocols:
            floor_top = next((p for p in _at(floors, protocol=proto, concurrency=top)), None)
            floor_one = next((p for p in _at(floors, protocol=proto, concurrency=1)), None)
            cost = 1 / floor_top.rps if floor_top and floor_top.rps > 0 else NAN
            for conc in concs:
                group = _at(points, model=model, protocol=proto, concurrency=conc)
                ours, peer = _ours(group), best_of([p for p in group if p.group == "peer"])
                limit = bound(conc, fixed, per_row, cost)
                target = (fixed + per_row) * 1e3 + floor_one.p50_ms if conc == 1 and floor_one else NAN
                ideal = next((p for p in _at(ideals, model=model, protocol=proto, concurrency=conc)), None)
                rows.append(
                    {
                        "model": model,
                        "fixed_ms": fixed * 1e3,
                        "per_row_ms": per_row * 1e3,
                        "protocol": proto,
                        "concurrency": conc,
                        "ours_rps": ours.rps if ours else NAN,
                        "ours_p50_ms": ours.p50_ms if ours else NAN,
                        "ours_dispatch": ours.dispatch if ours else "",
                        "peer_rps": peer.rps if peer else NAN,
                        "peer_cfg": peer.server.removeprefix("peer-") if peer else "",
                        "floor_us_per_req": cost * 1e6,
                        "bound_rps": limit,
                        "target_p50_ms": target,
                        "ideal_rps": ideal.rps if ideal else NAN,
                        "ideal_p50_ms": ideal.p50_ms if ideal else NAN,
                        "problems": problems(group),
                    }
                )
    return rows


def real_rows(points: list[Point], models: list[str], protocols: list[str], concs: list[int]) -> list[dict]:
    rows = []
    for model in models:
        for proto in protocols:
            for conc in concs:
                group = _at(points, model=model, protocol=proto, concurrency=conc)
                ours, peer = _ours(group), best_of([p for p in group if p.group == "peer"])
                floor = next((p for p in group if p.group == "floor" and p.ok > 0), None)
                seen = (("ours", ours), ("peer", peer), ("floor", floor))
                rows.append(
                    {
                        "model": model,
                        "protocol": proto,
                        "concurrency": conc,
                        **{f"{n}_rps": x.rps if x else NAN for n, x in seen},
                        **{f"{n}_p50_ms": x.p50_ms if x else NAN for n, x in seen},
                        "peer_cfg": peer.server.removeprefix("peer-") if peer else "",
                        "ours_dispatch": ours.dispatch if ours else "",
                        "problems": problems(group),
                    }
                )
    return rows


def _verdict(value: float, target: float) -> str:
    if math.isnan(value) or math.isnan(target):
        return ""
    return " met" if value <= target * P50_SLACK else " **missed**"


def sections(sim: list[dict], real: list[dict]) -> list[str]:
    """The Markdown tables (also what dispatch.py prints)."""
    out: list[str] = []
    if sim:
        out += [
            "## Simulated device: against an ideal device's bound",
            "",
            "1-row requests, C closed-loop clients. `bound` = C / (F + R·C + C·f), f = `floor µs/req` = 1 / "
            "the floor's req/s at the top concurrency (same protocol). `ours/bound`, `peer/bound`, "
            "`ours/peer`: throughput ratios (`peer` = the peer's better configuration at that point, named "
            "in `cfg`). `p50 target` (1 client only) = F + R + the floor's 1-client p50; `p50/target` "
            f"is met at ≤ {P50_SLACK:.2f}. `ideal`: the floor that batches knowing its clients (floor.IdealFloor: "
            "every client's request in one pass of F + R·C on a thread, on MLServer's own path), measured: "
            "the bound realised on this machine, the wake-ups of an idle machine and its cold front end "
            "included; at 1 client its p50 is the least any runtime on this MLServer shows. `ours/ideal`, "
            "`p50/ideal` compare ours with it. `ours ran`: the arrangement of the clients our batcher ran "
            "at the window's end, from its model metadata (`torchflow.dispatch`, in the JSON whole): "
            "`one group`, `groups` that take turns, `all wait` for each other, `(trial)` while judged. "
            "`problems`: failed/erroring/wrong points, and `busy` ones, where "
            f"the rest of the machine used more than {BUSY_CORES} cores during the window (noise).",
            "",
            "| model | F ms | R ms | proto | C | ours req/s | peer req/s | cfg | floor µs/req | bound req/s "
            "| ours/bound | peer/bound | ours/peer | ideal req/s | ideal/bound | ours/ideal | ours p50 ms "
            "| p50 target ms | p50/target | ideal p50 ms | p50/ideal | ours ran | problems |",
            "|" + "---|" * 23,
        ]
        for r in sim:
            p50 = ratio(r["ours_p50_ms"], r["target_p50_ms"]) + _verdict(r["ours_p50_ms"], r["target_p50_ms"])
            one = r["concurrency"] == 1
            out.append(
                f"| {r['model']} | {r['fixed_ms']:g} | {r['per_row_ms']:g} | {r['protocol']} "
                f"| {r['concurrency']} | {fmt(r['ours_rps'])} | {fmt(r['peer_rps'])} | {r['peer_cfg']} "
                f"| {fmt(r['floor_us_per_req'])} | {fmt(r['bound_rps'])} "
                f"| {ratio(r['ours_rps'], r['bound_rps'])} | {ratio(r['peer_rps'], r['bound_rps'])} "
                f"| {ratio(r['ours_rps'], r['peer_rps'])} | {fmt(r['ideal_rps'])} "
                f"| {ratio(r['ideal_rps'], r['bound_rps'])} | {ratio(r['ours_rps'], r['ideal_rps'])} "
                f"| {fmt(r['ours_p50_ms'], 2)} "
                f"| {fmt(r['target_p50_ms'], 2)} | {p50 if one else ''} "
                f"| {fmt(r['ideal_p50_ms'], 2) if one else ''} "
                f"| {ratio(r['ours_p50_ms'], r['ideal_p50_ms']) if one else ''} "
                f"| {arrangement(r['ours_dispatch'])} | {r['problems'] or ''} |"
            )
    if real:
        out += [
            "",
            "## Real models",
            "",
            "1-row requests. `ours/peer`, `ours/floor`: throughput ratios (> 1: ours serves more); "
            "`p50 ours/peer`, `p50 ours/floor`: latency ratios (< 1: ours answers sooner); `ours ran` and `problems` as above.",
            "",
            "| model | proto | C | ours req/s | peer req/s | cfg | floor req/s | ours/peer | ours/floor "
            "| ours p50 ms | peer p50 ms | floor p50 ms | p50 ours/peer | p50 ours/floor | ours ran "
            "| problems |",
            "|" + "---|" * 16,
        ]
        for r in real:
            out.append(
                f"| {r['model']} | {r['protocol']} | {r['concurrency']} | {fmt(r['ours_rps'])} "
                f"| {fmt(r['peer_rps'])} | {r['peer_cfg']} | {fmt(r['floor_rps'])} "
                f"| {ratio(r['ours_rps'], r['peer_rps'])} | {ratio(r['ours_rps'], r['floor_rps'])} "
                f"| {fmt(r['ours_p50_ms'], 2)} | {fmt(r['peer_p50_ms'], 2)} | {fmt(r['floor_p50_ms'], 2)} "
                f"| {ratio(r['ours_p50_ms'], r['peer_p50_ms'])} | {ratio(r['ours_p50_ms'], r['floor_p50_ms'])} "
                f"| {arrangement(r['ours_dispatch'])} | {r['problems'] or ''} |"
            )
    return out
