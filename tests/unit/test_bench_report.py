"""The dispatch benchmark's report (benchmarks/dispatch_report.py) names the arrangement our batcher ran at
each point from the batcher's own account (`Population.describe`, via model metadata). The texts here
come from a real `Population` driven through a groups trial, so a change of wording there fails here
instead of turning every point of the next benchmark into a wrong label."""

from __future__ import annotations

import sys
from pathlib import Path

from mlserver_torchflow.engine.clients import Population
from mlserver_torchflow.engine.trials import SETTLED
from tests.unit.engine.test_clients import MS, settled, tried

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from dispatch_report import arrangement

DEVICE = "computes on the device (measured: the pass's thread is busy 4% of its time); pass ~5.00 ms"


def _said(population: Population) -> str:
    return arrangement(DEVICE + population.describe(3 * MS))


def test_the_report_names_each_arrangement_the_batcher_describes() -> None:
    population = settled(Population(peak=8.0), rows=8, every=16 * MS)
    population.returns.per_row = 1.0 * MS
    assert _said(population) == "one group"
    assert population.group_rows(5 * MS, 0.3 * MS, 3 * MS) == 4
    assert _said(population) == "groups (trial)"
    tried(population, 9 * MS, start=SETTLED * 16 * MS)  # serves less
    assert _said(population) == "one group (groups refused)"

    kept = settled(Population(peak=8.0), rows=8, every=16 * MS)
    kept.returns.per_row = 1.0 * MS
    assert kept.group_rows(5 * MS, 0.3 * MS, 3 * MS) == 4
    tried(kept, 6 * MS, start=SETTLED * 16 * MS)  # serves more
    assert _said(kept) == "groups"


def test_a_point_without_an_account_or_clients_reads_as_such() -> None:
    assert arrangement("") == "–"  # not ours, or the metadata did not answer
    assert arrangement(DEVICE) == "as they come"  # no clients measured: the hold rule alone
    patient = "computes on the host; pass ~0.30 ms; batches wait for every client (on trial)"
    assert arrangement(patient) == "all wait (trial)"
