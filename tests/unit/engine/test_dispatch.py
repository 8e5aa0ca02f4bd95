"""The dispatch rule on recorded traces: the cost fit, the arrival gap, `hold`, and a closed-loop simulation.

The simulation drives the real `CostModel`, `Arrivals` and `hold` with C closed-loop clients, a device
that costs `F + R * rows` per pass and a front-end that spends `f` per request on one event loop, as a
real server does. The bound is the ideal device's: all C rows in one pass, front-end not overlapped,
`C / (F + R C + C f)`. Greedy (an idle device runs what is queued at once) is the rule this replaced.
"""

from __future__ import annotations

import heapq
import math

import numpy as np
import pytest

from mlserver_torchflow.engine.clients import Population
from mlserver_torchflow.engine.dispatch import Arrivals, CoreUse, CostModel, hold, stage_next

MS = 1e-3


def test_cost_fit_recovers_fixed_and_per_row_from_noisy_passes() -> None:
    rng = np.random.default_rng(0)
    cost = CostModel()
    for _ in range(200):
        rows = int(rng.integers(1, 65))
        cost.observe(rows, 20 * MS + 0.3 * MS * rows + rng.normal(0, 0.2 * MS))
    fixed, per_row = cost.fit()
    assert fixed == pytest.approx(20 * MS, rel=0.05)
    assert per_row == pytest.approx(0.3 * MS, rel=0.1)


def test_the_spread_says_how_far_off_predictions_run() -> None:
    steady, noisy = CostModel(), CostModel()
    rng = np.random.default_rng(1)
    for _ in range(50):
        steady.observe(8, 10 * MS)
        noisy.observe(8, 10 * MS + rng.normal(0, 2 * MS))
    assert steady.spread() == pytest.approx(0.0, abs=1e-9)
    assert 1 * MS < noisy.spread() < 4 * MS


def test_passes_of_one_size_count_as_fixed_cost() -> None:
    cost = CostModel()
    for _ in range(5):
        cost.observe(1, 3 * MS)
    assert cost.fit() == pytest.approx((3 * MS, 0.0))
    assert not CostModel().known and CostModel().fit() == (0.0, 0.0)


def test_batches_that_settle_on_one_size_keep_the_per_row_cost() -> None:
    """A closed loop of 8 clients on a row-bound device settles on batches of 8: without the per-row
    cost that varied sizes showed, the fit would call all 10 ms fixed and hold for rows that cost as
    much as they save."""
    cost = CostModel()
    for rows in (1, 8) * 3:  # warm-up's timed passes (warmup.calibrate)
        cost.observe(rows, 2 * MS + 1 * MS * rows)
    for _ in range(200):
        cost.observe(8, 10 * MS)
    fixed, per_row = cost.fit()
    assert fixed == pytest.approx(2 * MS, rel=0.01) and per_row == pytest.approx(1 * MS, rel=0.01)
    fresh = CostModel()
    for _ in range(20):
        fresh.observe(8, 10 * MS)
    assert fresh.fit() == (pytest.approx(10 * MS), 0.0)  # never separated: all of it fixed


def test_cost_fit_follows_a_device_that_slows_down() -> None:
    cost = CostModel()
    for rows in [1, 8, 16, 32] * 10:
        cost.observe(rows, 2 * MS + 0.1 * MS * rows)
    for rows in [1, 8, 16, 32] * 10:  # the device now takes four times as long
        cost.observe(rows, 8 * MS + 0.4 * MS * rows)
    fixed, per_row = cost.fit()
    assert fixed == pytest.approx(8 * MS, rel=0.1)
    assert per_row == pytest.approx(0.4 * MS, rel=0.1)


def test_a_fit_with_no_fixed_part_goes_through_zero() -> None:
    cost = CostModel()
    for rows in (1, 2, 4, 8) * 5:
        cost.observe(rows, 1 * MS * rows - 0.5 * MS)  # points that extrapolate below zero
    fixed, per_row = cost.fit()
    assert fixed == 0.0 and per_row > 0


def test_arrival_gap_is_a_running_mean_per_row() -> None:
    arrivals = Arrivals()
    arrivals.arrived(0.0, 1)
    assert math.isinf(arrivals.gap)  # one request says nothing about the rate
    arrivals.arrived(0.010, 1)
    assert arrivals.gap == pytest.approx(0.010)
    arrivals.arrived(0.030, 4)  # 4 rows in 20 ms: 5 ms a row
    assert arrivals.gap == pytest.approx(0.010 + 0.2 * (0.005 - 0.010))


def test_the_first_arrival_after_a_pass_measures_the_return_lag_not_the_gap() -> None:
    """Replayed from a real server (gRPC, 8 closed-loop clients, a 20 ms pass): two groups of four
    alternate; each group arrives 0.3-0.7 ms apart while the other computes. Counting the round trip
    across a pass as a gap put the mean gap at 7 ms, so `hold` saw 20 / 7 < 5 rows coming and sent each
    group alone. Measured as the lag, the gap stays the burst's own."""
    arrivals = Arrivals()
    cycle = 25.3 * MS
    for k in range(12):
        t0 = k * cycle
        arrivals.ended(t0 + 23.5 * MS, 4)  # the other group's pass ends
        for at in (0.0, 0.7, 1.1, 1.4):  # this group comes back, 0.9 ms after the end
            arrivals.arrived(t0 + cycle - 0.9 * MS + at * MS, 1)
        assert arrivals.owed == 0
    assert arrivals.gap < 0.6 * MS, arrivals.gap
    assert arrivals.lag == pytest.approx(0.9 * MS, rel=0.05)
    assert 20 * MS / arrivals.gap > 4  # so the rule holds the group for the other


def test_owed_rows_count_down_as_requests_arrive() -> None:
    arrivals = Arrivals()
    arrivals.arrived(0.0, 1)
    arrivals.ended(0.020, 3)
    assert arrivals.owed == 3 and arrivals.returns_at(0.020) == pytest.approx(0.020)  # no lag seen yet
    arrivals.arrived(0.022, 1)
    assert arrivals.owed == 2 and arrivals.lag == pytest.approx(0.002)
    arrivals.arrived(0.0225, 4)  # more than owed: nobody is owed, never fewer than none
    assert arrivals.owed == 0
    assert math.isinf(arrivals.gap) is False and arrivals.gap == pytest.approx(0.0005 / 4)


@pytest.mark.parametrize(
    ("rows", "waited", "since_last", "gap", "fixed", "expected"),
    [
        (1, 0.0, 0.0, math.inf, 20 * MS, 0.0),  # no rate known: never wait for nobody
        (1, 0.0, 0.0, 25 * MS, 20 * MS, 0.0),  # a lone client: its gap exceeds a pass
        (1, 0.0, 0.0, 0.5 * MS, 20 * MS, 1.0 * MS),  # a burst on a launch-bound device: hold for 2 gaps
        (39, 0.0, 0.0, 0.5 * MS, 20 * MS, 1.0 * MS),  # 39 < 20 / 0.5: still worth holding
        (40, 0.0, 0.0, 0.5 * MS, 20 * MS, 0.0),  # the rows expected in one pass are fewer than those in hand
        (4, 0.0, 0.0, 0.5 * MS, 2 * MS, 0.0),  # row-bound: hardly any hold
        (1, 0.0, 1.2 * MS, 0.5 * MS, 20 * MS, 0.0),  # nobody came for two gaps: the burst is over
        (1, 9.5 * MS, 0.0, 0.5 * MS, 20 * MS, 0.5 * MS),  # max_batch_time caps the hold
        (1, 10 * MS, 0.0, 0.5 * MS, 20 * MS, 0.0),
        (64, 0.0, 0.0, 0.01 * MS, 20 * MS, 0.0),  # full
    ],
)
def test_hold(rows: int, waited: float, since_last: float, gap: float, fixed: float, expected: float) -> None:
    got = hold(rows, waited, since_last, gap, fixed, max_rows=64, max_wait=10 * MS)
    assert got == pytest.approx(expected)


def test_clients_still_owed_keep_the_hold_past_two_gaps() -> None:
    """Answers still being written hold back the clients' next requests: a burst that pauses is not
    over while rows of the last pass have not come back. max_batch_time still caps the wait."""
    args = dict(rows=1, waited=2 * MS, since_last=1.5 * MS, gap=0.5 * MS, fixed=20 * MS, max_rows=64)
    assert hold(**args, max_wait=10 * MS) == 0.0  # two gaps passed: over
    assert hold(**args, max_wait=10 * MS, owed=7) == pytest.approx(8 * MS)
    assert hold(**{**args, "rows": 40}, max_wait=10 * MS, owed=7) == 0.0  # not worth it, owed or not


def test_core_use_measured_and_declared() -> None:
    core = CoreUse()
    assert core.on_core  # unmeasured: one batch at a time
    for _ in range(20):
        core.observe(cpu=0.0002, wall=0.020)  # a pass that waits on something else
    assert not core.on_core and "device (measured" in core.describe()
    for _ in range(20):
        core.observe(cpu=0.019, wall=0.020)
    assert core.on_core and core.depth == 1
    for _ in range(20):
        core.observe(cpu=0.008, wall=0.020)  # on our cores, waiting for the GIL the event loop holds
    assert core.on_core
    for _ in range(20):
        core.observe(cpu=0.003, wall=0.020)
    assert not core.on_core and core.depth == 2
    declared = CoreUse(declared=False)
    declared.observe(cpu=1.0, wall=1.0)
    assert not declared.on_core and declared.describe() == "device (declared)"
    assert stage_next(now=0.019, running_ends=0.020, lead=0.002)
    assert not stage_next(now=0.010, running_ends=0.020, lead=0.002)


def simulate(
    clients: int,
    fixed: float,
    per_row: float,
    front: float,
    adaptive: bool,
    passes: int = 400,
    population: bool = True,
    arrivals: Arrivals | None = None,
) -> tuple[float, float]:
    """(requests per second, mean latency) of `clients` closed-loop clients after a warm-up; `arrivals`
    may carry what earlier traffic left behind."""
    cost, peak = CostModel(), Population()
    arrivals = arrivals or Arrivals()
    computing = 0
    events: list[tuple[float, int, str]] = []  # (time, order, kind)
    order = 0

    def at(time: float, kind: str) -> None:
        nonlocal order
        order += 1
        heapq.heappush(events, (time, order, kind))

    loop_free = 0.0
    for _ in range(clients):  # each request costs the event loop `front` before it reaches the batcher
        loop_free += front
        at(loop_free, "arrive")
    queue: list[float] = []
    busy_until: float | None = None
    freed = 0.0  # when the last pass ended: in a closed loop its answers bring requests back
    done, started, latency, count = 0, 0.0, 0.0, 0
    while done < passes:
        now, _, kind = heapq.heappop(events)
        if kind == "arrive":
            arrivals.arrived(now, 1)
            queue.append(now)
            peak.arrived(len(queue) + computing)
        elif kind == "end":
            arrivals.ended(now, computing)
            busy_until, freed, computing = None, now, 0
            peak.passed()
        if busy_until is not None or not queue:
            continue
        wait = 0.0
        if adaptive and not (population and peak.all_in(len(queue))):
            wait = hold(
                len(queue),
                now - max(queue[0], freed),
                arrivals.quiet(now, freed, freed),
                arrivals.gap,
                cost.fit()[0],
                64,
                10 * MS,
                arrivals.owed,
            )
        if wait > 0:
            at(now + wait, "timer")
            continue
        batch, queue = queue[:64], queue[64:]
        computing = len(batch)
        seconds = fixed + per_row * len(batch)
        cost.observe(len(batch), seconds)
        busy_until = now + seconds
        at(busy_until, "end")
        done += 1
        if done == passes // 4:
            started, latency, count = busy_until, 0.0, 0
        loop_free = max(loop_free, busy_until)
        for arrived in batch:
            if done > passes // 4:
                latency += busy_until - arrived + front
                count += 1
            loop_free += front
            at(loop_free, "arrive")
    return count / (busy_until - started), latency / count  # type: ignore[operator]


SHAPES = {  # fixed, per-row, front-end seconds: launch-bound to row-bound
    "launch": (20 * MS, 0.1 * MS, 0.5 * MS),
    "mid": (5 * MS, 0.3 * MS, 0.5 * MS),
    "row": (2 * MS, 1.0 * MS, 0.5 * MS),
    "tiny-launch": (1 * MS, 0.01 * MS, 0.3 * MS),
}


@pytest.mark.parametrize("clients", [8, 32])
@pytest.mark.parametrize("shape", SHAPES)
def test_closed_loop_reaches_the_ideal_devices_bound(shape: str, clients: int) -> None:
    fixed, per_row, front = SHAPES[shape]
    bound = clients / (fixed + per_row * clients + clients * front)
    adaptive, _ = simulate(clients, fixed, per_row, front, adaptive=True)
    assert adaptive >= 0.85 * bound, (adaptive / bound, shape, clients)


def test_greedy_loses_half_a_launch_bound_device_and_adaptive_does_not() -> None:
    fixed, per_row, front = SHAPES["launch"]
    bound = 8 / (fixed + per_row * 8 + 8 * front)
    greedy, _ = simulate(8, fixed, per_row, front, adaptive=False)
    adaptive, _ = simulate(8, fixed, per_row, front, adaptive=True)
    assert greedy < 0.7 * bound < adaptive


@pytest.mark.parametrize("shape", SHAPES)
def test_a_lone_client_never_waits(shape: str) -> None:
    fixed, per_row, front = SHAPES[shape]
    _, latency = simulate(1, fixed, per_row, front, adaptive=True)
    assert latency == pytest.approx(fixed + per_row + front, rel=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
def test_a_lone_client_after_a_burst_stops_waiting(shape: str) -> None:
    """A burst left a 0.3 ms gap behind. Every request of the lone client that follows comes first
    after a pass (a lag, not a gap); when the one before it came alone too, the interval is its gap,
    so within a few requests it is served at once again instead of held two burst gaps each time."""
    fixed, per_row, front = SHAPES[shape]
    burst = Arrivals()
    for k in range(20):
        burst.arrived(k * 0.3 * MS, 1)
    _, latency = simulate(1, fixed, per_row, front, adaptive=True, arrivals=burst)
    assert latency == pytest.approx(fixed + per_row + front, rel=1e-6)
    assert burst.gap > fixed


def test_a_request_alone_after_its_pass_samples_the_gap_only_when_the_last_one_was_alone_too() -> None:
    arrivals = Arrivals()
    for at in (0.0, 0.3, 0.6):  # a burst: 0.3 ms apart
        arrivals.arrived(at * MS, 1)
    arrivals.ended(20 * MS, 3)
    arrivals.arrived(21 * MS, 1)  # first after the pass: the lag, the gap stays the burst's
    assert arrivals.gap == pytest.approx(0.3 * MS) and arrivals.lag == pytest.approx(1 * MS)
    arrivals.ended(41 * MS, 1)
    arrivals.arrived(42 * MS, 1)  # alone again, after one alone: one request a pass, 21 ms apart
    assert arrivals.gap == pytest.approx(0.3 * MS + 0.2 * (21 * MS - 0.3 * MS))


@pytest.mark.parametrize("shape", SHAPES)
def test_once_every_client_is_in_the_batch_goes_without_the_bursts_tail(shape: str) -> None:
    """Closed loop: when the requests outstanding are back at their peak, nobody else is coming; the
    hold's two-gap tail goes, and with it latency, at no loss of throughput."""
    fixed, per_row, front = SHAPES[shape]
    with_peak = simulate(8, fixed, per_row, front, adaptive=True)
    without = simulate(8, fixed, per_row, front, adaptive=True, population=False)
    assert with_peak[0] >= 0.99 * without[0]
    assert with_peak[1] <= without[1]
    if shape == "launch":  # the tail is 2 gaps of 0.5 ms in a cycle of about 25 ms
        assert with_peak[1] < without[1] - 0.5 * MS
