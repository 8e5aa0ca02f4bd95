"""Trying an arrangement in place of the batcher's rule, and keeping it only where it serves more.

The batcher's models propose (clients.py: groups that take turns off our cores, patience on them); the
rows served decide. A model's inputs measured in one arrangement do not hold in the other, and where its
margin is thin the arrangement loses: 8 clients of a 5 ms fixed cost served fewer requests in two
groups than in one. So an arrangement is a trial of TRIAL passes between two spells of SETTLED in the
rule's, kept if it serves KEEP times the rows a second the rule did around it (the mean of before and
after), else undone and not tried again for a while: BLOCKED passes, twice as long after each further
failure, up to 64 times. Where it can never pay (an open loop's rate, which no waiting raises) it then
costs ever less. The rule after the trial as well as before it: this machine's speed steps between two
levels (benchmarks/speed.py), and a baseline taken before alone judged groups at 32 clients of the middle
shape by whichever level each side fell on.

Both rates are means over passes, not one reading: the rule's over its settled passes, the trial's over
its passes after the first GRACE, while the recent rate still holds the arrangement before. One reading
of a rate that follows the last ten passes or so kept a trial that lost 8% (noise on this machine).
"""

from __future__ import annotations

from dataclasses import dataclass

from .dispatch import DECAY

TRIAL = 30  # passes in an arrangement after which its rows served are compared with the rule's before it
KEEP = 1.05  # an arrangement stays if it serves at least 5% more rows a second than the rule did
BLOCKED = 100  # passes without a new trial after one that did not pay (doubling with each further one)
SETTLED = 20  # passes in one arrangement before its rate counts (a trial's baseline, the verdict)
GRACE = 10  # passes after a change whose recent rate still holds the arrangement before: not counted
MEAN_DECAY = 0.97  # what a rate in those means keeps a pass: the last 30 or so count (a baseline stays fresh)
MISSES = 2.5  # waits that brought too few, decayed a pass, that undo a trial: three in a row, four in ten


@dataclass
class Trial:
    """One arrangement's trials: `on` while it is tried or kept; `kept` passes from a trial's start
    after which a kept one gives way to the rule again, for a fresh baseline and a new trial (0: never)."""

    on: bool = False
    kept: int = 0  # passes from a trial's start before a kept one gives way to the rule (0: forever)
    _left: int = 0  # passes of the trial still to run
    _checking: int = 0  # passes of the rule after the trial still to run before the verdict
    _tried: float = 0.0  # the trial's mean rate, while the rule runs again
    _baseline: float = 0.0  # the rule's mean rate over its settled passes before the trial
    _blocked: int = 0  # passes without a new trial after one that did not pay
    _failures: int = 0
    _settled: int = 0  # passes since the arrangement last changed
    _misses: float = 0.0  # batches that went without everyone they waited for, decayed a pass
    _sum: float = 0.0  # the rates seen since the arrangement last changed, past GRACE, and how many: decayed
    _count: float = 0.0

    @property
    def on_trial(self) -> bool:
        """Tried, or the rule running again after the trial, until the verdict."""
        return (self.on and self._left > 0) or self._checking > 0

    @property
    def blocked(self) -> bool:
        return self._blocked > 0

    @property
    def mean(self) -> float | None:
        """The mean rate over the passes counted since the arrangement last changed (None: none yet)."""
        return self._sum / self._count if self._count else None

    def may_start(self) -> bool:
        return not self.on and not self._blocked and not self._checking and self._settled >= SETTLED

    def start(self, rate: float) -> None:
        """`rate`: the recent one, the baseline where the rule's passes gave no mean."""
        baseline = rate if self.mean is None else self.mean
        self.on, self._left, self._baseline, self._misses = True, TRIAL, baseline, 0.0
        self._recount()

    def stop(self) -> None:
        self.on, self._left, self._checking = False, 0, 0
        self._recount()

    def restart(self) -> None:
        """Other clients, or an idle spell: the rates seen so far compare nothing with those to come. A
        trial is void (undone, neither kept nor blocked); a kept arrangement stays, for KEPT passes more."""
        if self.on_trial:
            self.stop()
        self._recount()

    def missed(self) -> None:
        """A wait brought too few: more than MISSES recently (a few, as when clients leave, are forgiven),
        and the clients do not wait on each other (an open loop, clients that think): undone as a trial
        that did not pay."""
        self._misses += 1
        if self.on and self._misses > MISSES:
            self._fail()

    def _verdict(self) -> None:
        after = self._baseline if self.mean is None else self.mean
        if self._tried < KEEP * (self._baseline + after) / 2:
            self._fail()
            return
        self.on, self._failures = True, 0
        self._recount(TRIAL + SETTLED)  # kept: its passes counted from the trial's start

    def _recount(self, settled: int = 0) -> None:
        """The arrangement changed, or its rates compare nothing now: passes and means count afresh."""
        self._settled, self._sum, self._count = settled, 0.0, 0.0

    def _fail(self) -> None:
        self.stop()
        self._blocked, self._failures = BLOCKED << min(self._failures, 6), self._failures + 1

    def passed(self, rate: float) -> None:
        """After each pass: a trial is judged once over (`rate`: the rows served a second recently)."""
        self._blocked = max(self._blocked - 1, 0)
        self._settled += 1
        self._misses *= DECAY
        if self._settled > GRACE and (self._left or not self.on):
            self._sum, self._count = self._sum * MEAN_DECAY + rate, self._count * MEAN_DECAY + 1
        if self._checking:
            self._checking -= 1
            if not self._checking:
                self._verdict()
            return
        if not self.on:
            return
        if self._left:
            self._left -= 1
            if not self._left:  # the rule again, for a baseline after the trial too
                self._tried, self.on, self._checking = self.mean or 0.0, False, SETTLED
                self._recount()
        elif self.kept and self._settled >= self.kept:
            self.stop()  # the rule again, for a fresh baseline and a new trial
