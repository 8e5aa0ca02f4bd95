"""Trials of an arrangement in place of the batcher's rule (engine/trials.py), and when patience on our
cores is tried and undone (clients.Population.patient), on recorded shapes."""

from __future__ import annotations

import pytest

from mlserver_torchflow.engine.clients import Population
from mlserver_torchflow.engine.trials import BLOCKED, GRACE, SETTLED, TRIAL, Trial

MS = 1e-3


def tried(trial: Trial, rate: float, baseline: float = 100.0, after: float | None = None) -> Trial:
    """`trial` after SETTLED passes of the rule, a trial at `rate` rows a second, and SETTLED passes of
    the rule again (at `after`, else `baseline`): judged."""
    for _ in range(SETTLED):
        trial.passed(baseline)
    assert trial.may_start()
    trial.start(baseline)
    for _ in range(TRIAL):
        trial.passed(rate)
    assert trial.on_trial and not trial.on, "the rule again before the verdict"
    for _ in range(SETTLED):
        trial.passed(baseline if after is None else after)
    return trial


@pytest.mark.parametrize(("rate", "kept"), [(104.0, False), (106.0, True)])
def test_a_trial_is_kept_only_if_it_serves_more(rate: float, kept: bool) -> None:
    trial = tried(Trial(), rate)
    assert trial.on is kept and trial.blocked is not kept and not trial.on_trial


def test_the_verdict_weighs_means_over_passes_not_the_last_reading() -> None:
    """The rule's rate over its settled passes against the trial's past GRACE: a noisy reading at either
    end (a low one as the trial starts, a high one as it ends) does not keep a trial that loses."""
    trial = Trial()
    for _ in range(SETTLED - 1):
        trial.passed(100.0)
    trial.passed(70.0)
    trial.start(70.0)  # the recent rate dipped just now: the baseline is still about 100
    for k in range(TRIAL):
        trial.passed(200.0 if k < GRACE else 130.0 if k == TRIAL - 1 else 96.0)
    for _ in range(SETTLED):
        trial.passed(100.0)
    assert not trial.on and trial.blocked


@pytest.mark.parametrize(("after", "kept"), [(130.0, False), (100.0, True)])
def test_the_verdict_weighs_the_rule_before_and_after_the_trial(after: float, kept: bool) -> None:
    """The machine steps up to a faster level during the trial: 120 a second tried, against a rule at
    100 before and 130 after, is no gain (115 around it); against 100 after, it is."""
    trial = tried(Trial(), 120.0, after=after)
    assert trial.on is kept and trial.blocked is not kept


def test_each_failed_trial_blocks_the_next_twice_as_long() -> None:
    def blocked_for(trial: Trial) -> int:
        passes = 0
        while trial.blocked:
            trial.passed(100.0)
            passes += 1
        return passes

    trial = tried(Trial(), 90.0)
    blocked = [blocked_for(tried(trial, 90.0) if k else trial) for k in range(3)]
    assert blocked == [BLOCKED, 2 * BLOCKED, 4 * BLOCKED]
    tried(trial, 120.0).stop()  # a success (then the load changes): the count starts again
    assert blocked_for(tried(trial, 90.0)) == BLOCKED


def test_a_kept_arrangement_gives_way_to_the_rule_after_its_passes() -> None:
    trial = tried(Trial(kept=TRIAL + SETTLED + 50), 120.0)  # counted from the trial's start
    for _ in range(49):
        trial.passed(120.0)
    assert trial.on
    trial.passed(120.0)
    assert not trial.on and not trial.blocked, "the rule again, for a fresh baseline: not a failure"


def test_waits_that_bring_too_few_undo_a_trial_but_a_few_are_forgiven() -> None:
    trial = tried(Trial(kept=0), 120.0)
    for _ in range(2):  # two in a row, as when clients leave: forgiven
        trial.missed()
        trial.passed(120.0)
    for _ in range(10):
        trial.passed(120.0)
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


def test_a_restart_voids_a_trial_and_the_means_but_keeps_a_kept_arrangement() -> None:
    """Other clients, or an idle spell: a trial in progress is undone without a verdict (neither kept
    nor blocked), the rule settles afresh, and a kept arrangement stays."""
    trial = Trial()
    for _ in range(SETTLED):
        trial.passed(100.0)
    trial.start(100.0)
    trial.passed(300.0)
    trial.restart()
    assert not trial.on and not trial.blocked and not trial.may_start()
    for _ in range(SETTLED):
        trial.passed(300.0)
    assert trial.may_start()
    kept = tried(Trial(), 200.0)
    kept.restart()
    assert kept.on and not kept.on_trial


def test_the_rule_baseline_is_of_the_clients_now_not_a_pause_or_a_load_before() -> None:
    """A pause between two loads, counted as time between passes, made the rule's rate a quarter of
    itself, and a trial that served no more was kept. After an idle spell, or once the clients' peak
    moves LOAD_CHANGE, the rate and the trials' means start afresh."""
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
    assert population.rate() == pytest.approx(8 / (13 * MS), rel=0.01)
    for trial in (population.groups, population.patience):
        assert trial.mean == pytest.approx(8 / (13 * MS), rel=0.01)
    population.arrived(32)  # 32 clients now: the means are of 8
    assert population.groups.mean is None and not population.groups.may_start()
