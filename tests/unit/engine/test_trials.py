"""Trials of an arrangement in place of the batcher's rule (engine/trials.py), and when patience on our
cores is tried and undone (clients.Population.patient), on recorded shapes.

`run` plays passes whose pace depends on the side in place: `pace(t, on, since)` gives the rows a second
at time `t`, with the arrangement `on` or not, `since` passes after that last changed. So a machine whose
speed steps, or a change of arrangement that takes passes to settle, is a function, and the trial sees
only what it would see in a server: the end time and rows of each pass."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from mlserver_torchflow.engine.clients import Population
from mlserver_torchflow.engine.trials import BLOCK, BLOCKED, BLOCKS, SETTLED, SKIP, Trial

MS = 1e-3
ROWS = 8
TRIAL = 2 * BLOCKS * BLOCK  # passes from a trial's start to its verdict

Pace = Callable[[float, bool, int], float]


def steady(rule: float, tried: float) -> Pace:
    return lambda t, on, since: tried if on else rule


def run(trial: Trial, passes: int, pace: Pace, t: float = 0.0) -> float:
    """`passes` passes of ROWS rows, each as long as `pace` says; returns the time after the last."""
    since, was = 0, trial.on
    for _ in range(passes):
        since = 0 if trial.on != was else since
        was = trial.on
        t += ROWS / pace(t, trial.on, since)
        trial.passed(t, ROWS)
        since += 1
    return t


def judged(trial: Trial, pace: Pace, t: float = 0.0) -> float:
    """`trial` after SETTLED passes of the rule and a whole trial, at `pace`: returns the time after."""
    t = run(trial, SETTLED, pace, t)
    assert trial.may_start()
    trial.start()
    assert trial.on and trial.on_trial
    t = run(trial, TRIAL - 1, pace, t)
    assert trial.on_trial, "the verdict comes after the rule's last block"
    t = run(trial, 1, pace, t)
    assert not trial.on_trial
    return t


@pytest.mark.parametrize(("rate", "kept"), [(104.0, False), (106.0, True)])
def test_a_trial_is_kept_only_if_it_serves_more(rate: float, kept: bool) -> None:
    trial = Trial()
    judged(trial, steady(100.0, rate))
    assert trial.on is kept and trial.blocked is not kept


def test_the_sides_take_turns_in_blocks() -> None:
    trial = Trial()
    run(trial, SETTLED, steady(100.0, 100.0))
    trial.start()
    sides = []
    for _ in range(TRIAL):
        sides.append(trial.on)
        run(trial, 1, steady(100.0, 100.0))
    assert sides == ([True] * BLOCK + [False] * BLOCK) * BLOCKS


@pytest.mark.parametrize(("gain", "kept"), [(1.0, False), (1.1, True)])
@pytest.mark.parametrize("step", [0, BLOCK + BLOCK // 2, 2 * BLOCK + BLOCK // 2])
def test_a_step_of_the_machine_during_a_trial_is_no_gain(gain: float, kept: bool, step: int) -> None:
    """The machine steps from 100 to 130 rows a second as the trial starts, or in the middle of a block
    of the rule's, or of the arrangement's. At the start, judged against the rule before it alone (as
    first built), the same arrangement served 30% more; block by block, against the rule's blocks around
    each, one block of three did, and the median sets it aside. 10% more is a gain at either level."""
    trial = Trial()
    t = run(trial, SETTLED, steady(100.0, 100.0))
    trial.start()
    t = run(trial, step, steady(100.0, 100.0 * gain), t)
    run(trial, TRIAL - step, steady(130.0, 130.0 * gain), t)
    assert trial.on is kept and trial.blocked is not kept


def test_a_blocks_first_passes_count_for_neither_side() -> None:
    """Leaving the arrangement takes passes (two groups merge): the rule's first SKIP passes of each
    block run at a fifth of its rate. Counted, the rule would read slower, and the same arrangement kept."""

    def pace(_t: float, on: bool, since: int) -> float:
        return 20.0 if not on and since < SKIP else 100.0

    trial = Trial()
    run(trial, SETTLED, steady(100.0, 100.0))
    trial.start()
    run(trial, TRIAL, pace)
    assert not trial.on and trial.blocked


def test_each_failed_trial_blocks_the_next_twice_as_long() -> None:
    loses = steady(100.0, 90.0)

    def blocked_for(trial: Trial) -> int:
        passes = 0
        while trial.blocked:
            run(trial, 1, loses)
            passes += 1
        return passes

    trial, blocked = Trial(), []
    for _ in range(3):
        judged(trial, loses)
        blocked.append(blocked_for(trial))
    assert blocked == [BLOCKED, 2 * BLOCKED, 4 * BLOCKED]
    judged(trial, steady(100.0, 120.0))
    trial.stop()  # a success (then the load changes): the count starts again
    judged(trial, loses)
    assert blocked_for(trial) == BLOCKED


def test_a_kept_arrangement_gives_way_to_the_rule_after_its_passes() -> None:
    trial = Trial(kept=TRIAL + 50)  # counted from the trial's start
    t = judged(trial, steady(100.0, 120.0))
    t = run(trial, 49, steady(100.0, 120.0), t)
    assert trial.on
    run(trial, 1, steady(100.0, 120.0), t)
    assert not trial.on and not trial.blocked, "the rule again, for a fresh baseline: not a failure"


def test_waits_that_bring_too_few_undo_a_trial_but_a_few_are_forgiven() -> None:
    trial = Trial(kept=0)
    t = judged(trial, steady(100.0, 120.0))
    for _ in range(2):  # two in a row, as when clients leave: forgiven
        trial.missed()
        t = run(trial, 1, steady(100.0, 120.0), t)
    run(trial, 10, steady(100.0, 120.0), t)
    assert trial.on
    for _ in range(3):
        trial.missed()
    assert not trial.on and trial.blocked


def busy(population: Population, rows: int, every: float, seconds: float, passes: int = SETTLED) -> None:
    for k in range(passes):
        population.passed((k + 1) * every, rows, seconds)


@pytest.mark.parametrize(
    ("rows", "peak", "seconds", "expected"),
    [
        (3, 32.0, 1.5 * MS, True),  # small batches, the device busy: tried
        (20, 32.0, 1.5 * MS, False),  # batches hold most clients already
        (3, 32.0, 0.5 * MS, False),  # the device mostly idle: nothing to gain from waiting
        (1, 1.5, 1.5 * MS, False),  # a lone client
    ],
)
def test_patience_is_tried_where_small_batches_keep_the_device_busy(
    rows: int, peak: float, seconds: float, expected: bool
) -> None:
    population = Population()
    busy(population, rows, 2 * MS, seconds)
    population.peak = peak
    assert population.patient() is expected


def test_patience_ends_for_a_lone_client_and_counts_thin_waits_only() -> None:
    population = Population()
    busy(population, 3, 2 * MS, 1.5 * MS)
    population.peak = 32.0
    assert population.patient()
    for _ in range(5):
        population.waited_out(20)  # 20 of 32 came: the wait paid
    assert population.patient()
    for _ in range(3):
        population.waited_out(4)  # 4 of 32: nobody waits on each other
    assert not population.patient() and population.patience.blocked
    lone = Population()
    busy(lone, 3, 2 * MS, 1.5 * MS)
    lone.peak = 32.0
    assert lone.patient()
    lone.peak = 1.0
    assert not lone.patient()


def test_a_restart_voids_a_trial_and_the_rates_but_keeps_a_kept_arrangement() -> None:
    """Other clients, or an idle spell: a trial in progress is undone without a verdict (neither kept
    nor blocked), the rule settles afresh, and a kept arrangement stays."""
    trial = Trial()
    t = run(trial, SETTLED, steady(100.0, 300.0))
    trial.start()
    t = run(trial, 1, steady(100.0, 300.0), t)
    trial.restart()
    assert not trial.on and not trial.on_trial and not trial.blocked and not trial.may_start()
    assert trial.rate() is None
    run(trial, SETTLED, steady(100.0, 300.0), t)
    assert trial.may_start()
    kept = Trial()
    judged(kept, steady(100.0, 200.0))
    kept.restart()
    assert kept.on and not kept.on_trial


def test_the_rule_baseline_is_of_the_clients_now_not_a_pause_or_a_load_before() -> None:
    """A pause between two loads, counted as time between passes, made the rule's rate a quarter of
    itself, and a trial that served no more was kept. After an idle spell, or once the clients' peak
    moves LOAD_CHANGE, the trials' rates start afresh."""
    population = Population()
    population.arrived(1)
    for k in range(100):  # one client, a pass every 8 ms: 125 rows a second
        population.passed(k * 8 * MS, 1)
    paused = 100 * 8 * MS + 1.0
    population.passed(paused, 1)  # a second without requests, then 8 clients
    for k in range(1, 8):
        population.arrived(k + 1)
    for k in range(1, SETTLED + 1):
        population.passed(paused + k * 13 * MS, 8)  # 8 rows every 13 ms: 615 a second
    for trial in (population.groups, population.patience):
        assert trial.rate() == pytest.approx(8 / (13 * MS), rel=0.01) and trial.may_start()
    population.arrived(32)  # 32 clients now: the rates are of 8
    assert population.groups.rate() is None and not population.groups.may_start()
