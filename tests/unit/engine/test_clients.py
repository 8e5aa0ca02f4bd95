"""The clients as the batcher sees them (engine/clients.py): their peak, how fast they come back, and
the groups they should form, checked on recorded shapes and in a closed-loop simulation where a
device takes two passes in flight and one event loop writes every answer and reads every request.

The simulation is the real server's shape: when a pass ends the loop writes all of its answers
(`write` each), then reads the requests they bring back (`read` each, `think` after its answer at
the earliest), so requests arrive in a clump after a lag. The batcher's side drives the real
`Arrivals`, `Population`, `CostModel` and `hold`, and hands the next batch over `LEAD` before the
running pass ends, as `batching.Batcher` does off-core.
"""

from __future__ import annotations

import heapq

import pytest

from mlserver_torchflow.engine.clients import Population, Returns, group_rows, round_seconds
from mlserver_torchflow.engine.dispatch import Arrivals, CostModel, hold
from mlserver_torchflow.engine.trials import BLOCK, BLOCKS, SETTLED

MS = 1e-3
LEAD = 1 * MS


def test_the_peak_follows_the_clients_and_fades_when_they_leave() -> None:
    peak = Population()
    assert not peak.all_in(1)  # nothing seen: no claim
    for outstanding in (1, 2, 3, 4):
        peak.arrived(outstanding)
    assert peak.all_in(4) and not peak.all_in(3)
    for _ in range(10):  # now 3 clients: after a few passes the peak of 4 is forgotten
        peak.passed()
        peak.arrived(3)
    assert peak.all_in(3)
    lone = Population()
    lone.arrived(1)
    assert not lone.all_in(1), "one client is the hold rule's case (it never waits), not this one's"


@pytest.mark.parametrize(
    ("fixed", "per_row", "clients", "back", "lag", "expected"),
    [
        (20 * MS, 0.1 * MS, 32, 0.4 * MS, 1 * MS, None),  # launch-bound: one group (37 ms against 43)
        (20 * MS, 0.1 * MS, 8, 0.5 * MS, 1 * MS, None),
        (5 * MS, 0.3 * MS, 32, 0.4 * MS, 1 * MS, 16),  # two groups hide the loop's 13 ms behind the device
        (2 * MS, 1.0 * MS, 8, 0.5 * MS, 3 * MS, 4),  # row-bound: the loop's time under the other pass
        (5 * MS, 0.3 * MS, 8, 0.4 * MS, 1 * MS, None),  # 12.6 against 12.4 ms: not worth a fixed cost
        (5 * MS, 0.3 * MS, 1, 9.0 * MS, 1 * MS, None),  # a lone client
        (5 * MS, 0.3 * MS, 32, 0.0, 0.0, None),  # nothing measured yet
    ],
)
def test_group_rows(
    fixed: float, per_row: float, clients: int, back: float, lag: float, expected: int | None
) -> None:
    assert group_rows(fixed, per_row, clients, back, lag) == expected


def settled(
    population: Population, rows: int, every: float, passes: int = SETTLED, start: float = 0.0
) -> Population:
    """`population` after `passes` passes of `rows` rows, one every `every` seconds from `start`."""
    for k in range(passes):
        population.passed(start + (k + 1) * every, rows)
        population.peak = max(population.peak, 8.0)
    return population


def tried(population: Population, every: float, start: float, passes: int = 2 * BLOCKS * BLOCK) -> float:
    """`passes` passes of a groups trial from `start` (all of it: to the verdict), 8 clients: in turn,
    two groups of 4 rows every `every` seconds, and one of 8 every 16 ms. Returns the time after."""
    t = start
    for _ in range(passes):
        rows, gap = (4, every) if population.groups.on else (8, 16 * MS)
        t += gap
        population.passed(t, rows)
        population.peak = max(population.peak, 8.0)
    return t


@pytest.mark.parametrize(("every", "kept"), [(9 * MS, False), (6 * MS, True)])
def test_groups_on_trial_stay_only_if_they_serve_more(every: float, kept: bool) -> None:
    """One group served 8 rows every 16 ms (500 a second). Two groups serving 4 rows every 9 ms (444) are
    undone after the trial, and not tried again for a while; every 6 ms (667), they stay."""
    population = settled(Population(peak=8.0), rows=8, every=16 * MS)
    population.returns.per_row = 1.0 * MS  # the model: 18 ms a round in one group, 13.4 in two
    assert population.group_rows(5 * MS, 0.3 * MS, 3 * MS) == 4 and population.groups.on
    t = tried(population, every, SETTLED * 16 * MS, passes=BLOCK)
    assert population.group_rows(5 * MS, 0.3 * MS, 3 * MS) is None, "the rule's turn"
    tried(population, every, t, passes=(2 * BLOCKS - 1) * BLOCK)
    assert population.groups.on is kept and not population.groups.on_trial
    assert (population.group_rows(5 * MS, 0.3 * MS, 3 * MS) == 4) is kept


def test_a_trial_runs_to_its_verdict_even_where_the_model_withdraws() -> None:
    """Groups in place change what the model is fed: a model that withdraws a few passes into the trial
    does not end it (ended, it began again once settled, and was never judged). The verdict does: two
    groups of 4 rows every 9 ms (444 a second, against one group's 500) are undone and blocked."""
    population = settled(Population(peak=8.0), rows=8, every=16 * MS)
    population.returns.per_row = 1.0 * MS  # 18 ms a round in one group, 13.4 in two: groups form
    assert population.group_rows(5 * MS, 0.3 * MS, 3 * MS) == 4 and population.groups.on_trial
    t = tried(population, 9 * MS, SETTLED * 16 * MS, passes=3)
    population.returns.per_row = 0.2 * MS  # measured in groups: the model now says one group
    assert population.group_rows(5 * MS, 0.3 * MS, 3 * MS) == 4 and population.groups.on_trial
    tried(population, 9 * MS, t, passes=2 * BLOCKS * BLOCK - 3)
    assert not population.groups.on and population.groups.blocked
    population.returns.per_row = 1.0 * MS
    assert population.group_rows(5 * MS, 0.3 * MS, 3 * MS) is None, "blocked after the verdict"
    lone = settled(Population(peak=8.0), rows=8, every=16 * MS)
    lone.returns.per_row = 1.0 * MS
    assert lone.group_rows(5 * MS, 0.3 * MS, 3 * MS) == 4
    lone.peak = 1.0  # the clients left: nobody to group, the trial ends at once
    assert lone.group_rows(5 * MS, 0.3 * MS, 3 * MS) is None and not lone.groups.on


def test_groups_form_at_a_clear_gain_and_the_model_does_not_undo_them() -> None:
    """8 clients of the middle shape: 13.5 ms a round in one group, 12.4 in two (0.92). Not enough to
    split (a mix of one and two groups loses to both); once split, the trial decides, not the model."""
    args = (5 * MS, 0.3 * MS, 8, 0.385 * MS, 3 * MS)
    assert group_rows(*args) is None
    population = settled(Population(peak=8.0), rows=8, every=15 * MS)
    population.returns.per_row = 0.385 * MS
    assert population.group_rows(5 * MS, 0.3 * MS, 3 * MS) is None and not population.groups.on
    population.returns.per_row = 1.0 * MS  # the loop slows: 18 against 13.4 ms, groups form
    assert population.group_rows(5 * MS, 0.3 * MS, 3 * MS) == 4 and population.groups.on
    population.returns.per_row = 0.385 * MS  # back to 0.92: they stay for the trial
    assert population.group_rows(5 * MS, 0.3 * MS, 3 * MS) == 4


def test_a_round_in_groups_is_the_longest_of_device_loop_and_one_groups_cycle() -> None:
    args = dict(fixed=5 * MS, per_row=0.3 * MS, clients=32, back=0.4 * MS, lag=1 * MS)
    assert round_seconds(1, **args) == pytest.approx((5 + 9.6 + 1 + 12.8) * MS)
    assert round_seconds(2, **args) == pytest.approx((10 + 9.6) * MS)  # the device's work
    busy_loop = {**args, "back": 1 * MS}
    assert round_seconds(2, **busy_loop) == pytest.approx(32 * MS)  # the loop's work


def test_returns_time_each_passs_clients_less_the_lag() -> None:
    returns = Returns()
    returns.ended(0.0, 4)
    for at in (2.0, 2.5, 3.0):  # three of four back: nothing yet
        returns.arrived(at * MS, 1, lag=2 * MS)
    assert returns.per_row == 0.0
    returns.arrived(3.5 * MS, 1, lag=2 * MS)  # 3.5 ms for 4 rows: 2 ms of lag, then 0.5 ms each
    assert returns.per_row == pytest.approx(0.5 * MS)
    returns.ended(10 * MS, 1)
    returns.arrived(12 * MS, 1, lag=2 * MS)  # one row says nothing of the rows after the first
    assert returns.per_row == pytest.approx(0.5 * MS)


def test_clients_who_left_are_forgotten_not_charged_to_the_next_pass() -> None:
    """32 clients become 8: the pass that answered the 24 who left is never paid off; the 8 who stay
    pay the newest pass, their own, and the estimate stays theirs."""
    returns = Returns()
    returns.ended(0.0, 32)
    for k in range(8):
        returns.arrived((1 + 0.5 * k) * MS, 1, lag=1 * MS)
    for cycle in range(1, 6):
        t0 = cycle * 20 * MS
        returns.ended(t0, 8)
        for k in range(8):
            returns.arrived(t0 + (1 + 0.5 * k) * MS, 1, lag=1 * MS)
    assert returns.per_row == pytest.approx(0.5 * MS)


def test_a_window_longer_than_a_closed_loop_keeps_is_ignored() -> None:
    returns = Returns()
    returns.ended(0.0, 2)
    returns.arrived(0.3, 1, lag=0.0)
    returns.arrived(5.0, 1, lag=0.0)  # minutes later: a probe, not a client on its way back
    assert returns.per_row == 0.0


def closed_loop(
    clients: int, fixed: float, per_row: float, write: float, read: float, split: bool, passes: int = 600
) -> float:
    """Requests per second of `clients` closed-loop clients after a warm-up (see the module docstring);
    `split`: the batcher may form groups (Population.group_rows), else it waits for every client."""
    think = 0.2 * MS  # the client's own time between its answer and its next request
    cost, arrivals, population = CostModel(), Arrivals(), Population()
    for rows in (1, 8) * 3:  # the warm-up's timed passes (warmup.calibrate) seed the fit
        cost.observe(rows, fixed + per_row * rows)
    events: list[tuple[float, int, str, int]] = []
    order = 0

    def at(when: float, kind: str, rows: int = 0) -> None:
        nonlocal order
        order += 1
        heapq.heappush(events, (when, order, kind, rows))

    for k in range(clients):
        at((k + 1) * read, "arrive")
    loop_free, queue, running = clients * read, 0, []  # running: end times of the passes in flight
    done, started, answered = 0, 0.0, 0
    while done < passes:
        now, _, kind, rows = heapq.heappop(events)
        if kind == "arrive":
            queue += 1
            arrivals.arrived(now, 1)
            population.arrived(queue + sum(r for _, r in running), now, 1, arrivals.lag)
        elif kind == "end":
            running.pop(0)
            arrivals.ended(now, rows)
            population.passed(now, rows)
            done += 1
            if done == passes // 4:
                started, answered = now, 0
            answered += rows
            loop_free = max(loop_free, now) + rows * write  # every answer first, then the requests
            for k in range(rows):
                loop_free = max(loop_free, now + (k + 1) * write + think) + read
                at(loop_free, "arrive")
        if not queue or len(running) == 2:
            continue
        if running and now < running[0][0] - LEAD:
            at(running[0][0] - LEAD, "timer")
            continue
        fixed_fit, per_row_fit = cost.fit()
        computing = sum(r for _, r in running)
        target = population.group_rows(fixed_fit, per_row_fit, arrivals.lag) if split else None
        go = queue >= 64 or (not computing and population.all_in(queue))
        go = go or (target is not None and queue >= target)
        if not go:
            wait = hold(queue, 0.0, 0.0, arrivals.gap, fixed_fit, 64, 10 * MS, clients)
            if wait > 0 or computing:  # nobody comes back while none of their passes ended
                continue
        start = running[-1][0] if running else now
        seconds = fixed + per_row * queue
        cost.observe(queue, seconds)
        running.append((start + seconds, queue))
        at(start + seconds, "end", queue)
        queue = 0
    return answered / (now - started)


SHAPES = {  # fixed, per-row, clients, write, read: seconds (the loop's costs as measured on 2 cores)
    "launch-32": (20 * MS, 0.1 * MS, 32, 0.3 * MS, 0.2 * MS),
    "launch-8": (20 * MS, 0.1 * MS, 8, 0.3 * MS, 0.2 * MS),
    "mid-8": (5 * MS, 0.3 * MS, 8, 0.3 * MS, 0.2 * MS),
    "mid-32": (5 * MS, 0.3 * MS, 32, 0.3 * MS, 0.2 * MS),
    "row-8": (2 * MS, 1.0 * MS, 8, 0.3 * MS, 0.2 * MS),
    "row-32": (2 * MS, 1.0 * MS, 32, 0.3 * MS, 0.2 * MS),
}


@pytest.mark.parametrize("shape", SHAPES)
def test_groups_never_cost_throughput_and_win_where_the_loop_is_long_against_the_fixed_cost(
    shape: str,
) -> None:
    """Launch-bound and at 8 clients of the middle shape one group is best, and the rule keeps it (the
    hold rule alone waits for every client there: the round is one group's). With 32 clients of the
    middle shape the loop's 16 ms a round hide behind the other group's pass: 1.5 times the requests.
    Row-bound, the hold rule alone already goes at F / gap rows; groups change little."""
    fixed, per_row, clients, write, read = SHAPES[shape]
    whole = closed_loop(clients, fixed, per_row, write, read, split=False)
    groups = closed_loop(clients, fixed, per_row, write, read, split=True)
    one_group = clients / (fixed + per_row * clients + clients * (write + read))
    if shape.startswith("launch") or shape == "mid-8":
        assert whole == pytest.approx(one_group, rel=0.02), (whole, shape)
        assert groups == pytest.approx(whole, rel=0.01), (groups / whole, shape)
    assert groups >= 0.99 * whole, (groups / whole, shape)
    if shape == "mid-32":
        assert groups >= 1.4 * whole, (groups / whole, shape)
