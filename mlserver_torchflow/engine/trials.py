"""Trying an arrangement in place of the batcher's rule, and keeping it only where it serves more.

The batcher's models propose (clients.py: groups that take turns off our cores, patience on them); the
rows served decide. A model's inputs measured in one arrangement do not hold in the other, and where its
margin is thin the arrangement loses: 8 clients of a 5 ms fixed cost served fewer requests in two
groups than in one. So an arrangement is a trial, kept if it serves KEEP times the rows a second the rule
does, else undone and not tried again for a while: BLOCKED passes, twice as long after each further
failure, up to 64 times. Where it can never pay (an open loop's rate, which no waiting raises) it then
costs ever less.

A trial takes turns with the rule, in blocks of BLOCK passes: the rule's last block before it, then
BLOCKS of the arrangement, each followed by one of the rule. Each block of the arrangement is weighed
against the two of the rule around it, and the verdict is the median of those ratios. This machine's
speed steps between two levels within seconds (benchmarks/speed.py): a step that falls in one block
moves one ratio of three (in a block of the rule, two, one each way), which the median sets aside, and a
slow drift cancels between the blocks on either side. Judged on a spell of each
(30 passes tried between two spells of 20 of the rule, the first version), a step inside the trial still
moved the verdict by half of it.

A block's rate is its own rows over its own time (from the end of its SKIP-th pass to the end of its
last): no decayed mean carries the arrangement before into it. The first SKIP passes of a block are not
counted: the clients are still arranged as they were (two groups take a pass to merge, or to form).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from statistics import median

from .dispatch import DECAY

BLOCK = 12  # passes in a block: the rule's, or the arrangement's, in turn during a trial
SKIP = 2  # passes at a block's start that count for neither side: the clients are still arranged as before
BLOCKS = 3  # blocks of the arrangement in a trial, each between two of the rule's
KEEP = 1.05  # an arrangement stays if it serves at least 5% more rows a second than the rule around it
BLOCKED = 100  # passes without a new trial after one that did not pay (doubling with each further one)
SETTLED = 20  # passes of the rule before a trial may start (its last BLOCK are the trial's first block)
MISSES = 2.5  # waits that brought too few, decayed a pass, that undo a trial: three in a row, four in ten


@dataclass
class Trial:
    """One arrangement's trials: `on` while it is in place (a block of a trial, or kept); `kept` passes
    from a trial's start after which a kept one gives way to the rule again, for a new trial (0: never)."""

    on: bool = False
    kept: int = 0
    _block: int = 0  # the trial's block now running, from 1 (odd: the arrangement's); 0: no trial
    _rates: list[float] = field(default_factory=list)  # each block's rows a second, the rule's first
    _recent: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=BLOCK - SKIP + 1))
    _passes: int = 0  # passes since the arrangement last changed (a block's, or the rule's, or kept)
    _blocked: int = 0  # passes without a new trial after one that did not pay
    _failures: int = 0
    _misses: float = 0.0  # batches that went without everyone they waited for, decayed a pass

    @property
    def on_trial(self) -> bool:
        """A trial runs, in either of its turns, until the verdict."""
        return self._block > 0

    @property
    def blocked(self) -> bool:
        return self._blocked > 0

    def rate(self) -> float | None:
        """Rows a second over the last BLOCK - SKIP passes since the arrangement last changed (None: not
        so many yet)."""
        recent = self._recent
        if len(recent) < (recent.maxlen or 0):
            return None
        span = recent[-1][0] - recent[0][0]  # from the first pass's end: its rows came before
        return (sum(rows for _, rows in recent) - recent[0][1]) / span if span > 0 else None

    def may_start(self) -> bool:
        return not self.on and not self._blocked and not self._block and self._passes >= SETTLED

    def start(self) -> None:
        """The arrangement's first block; the rule's last one (its rate now) is the first compared."""
        baseline = self.rate()
        if baseline is None:  # may_start() was not asked: nothing to compare with, no trial
            return
        self.on, self._block, self._rates, self._misses = True, 1, [baseline], 0.0
        self._recount()

    def stop(self) -> None:
        self.on, self._block, self._rates = False, 0, []
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

    def passed(self, now: float, rows: int) -> None:
        """After each pass of `rows` rows (0: none ran), ended at `now`: a trial's block ends, in turn."""
        if rows <= 0:
            return
        self._blocked = max(self._blocked - 1, 0)
        self._misses *= DECAY
        self._passes += 1
        self._recent.append((now, rows))
        if self._block:
            if self._passes >= BLOCK:
                self._rates.append(self.rate() or 0.0)
                self._next_block()
        elif self.on and self.kept and self._passes >= self.kept:
            self.stop()  # the rule again, for a fresh baseline and a new trial

    def _next_block(self) -> None:
        if self._block < 2 * BLOCKS:
            self._block += 1
            self.on = self._block % 2 == 1
            self._recount()
            return
        rule, tried = self._rates[0::2], self._rates[1::2]
        gains = [t / ((a + b) / 2) for t, a, b in zip(tried, rule, rule[1:], strict=False) if a + b > 0]
        if not gains or median(gains) < KEEP:
            self._fail()
            return
        self.on, self._block, self._rates, self._failures = True, 0, [], 0
        self._recount(2 * BLOCKS * BLOCK)  # kept: its passes counted from the trial's start

    def _recount(self, passes: int = 0) -> None:
        """The arrangement changed, or its rates compare nothing now: passes and rates count afresh."""
        self._passes = passes
        self._recent.clear()

    def _fail(self) -> None:
        self.stop()
        self._blocked, self._failures = BLOCKED << min(self._failures, 6), self._failures + 1
