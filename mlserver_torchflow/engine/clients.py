"""The clients as the batcher sees them: how many keep requests outstanding, how fast they come back,
and how many groups they should form on a device that computes off the server's cores.

`Population` keeps the peak of requests outstanding (queued plus computing). Closed-loop clients (each
waits for its answer before it sends again) have all come back when the requests waiting (none
computing) are as many as that peak: nobody else is coming, and holding longer only adds latency.
While a pass computes, its clients are still to come back, so the hold rule decides; an open loop
seldom sits at its recent peak, so there too.

Groups. Closed-loop clients all in one batch leave the device idle while the event loop writes their answers and reads their next requests: a round costs

    F + R C + L + C c          (one group: the pass, then every client's turn through the loop)

for C clients, a pass of `F + R n`, `L` until the first client is back (the return lag) and `c` more
for each other one. In k groups that take turns, one group's answers and next requests go through the
loop while another computes, and a round is the longest of the device's work, the loop's, and one
group's own cycle:

    max(k F + R C,  C c,  F + L + (R C + C c) / k)

k - 1 more fixed costs buy the overlap: worth it where the loop's time per round is long against the
fixed cost (many clients, a short fixed cost, a row-bound device), never on a launch-bound one (20 ms
fixed, 32 clients at 0.4 ms each: one group, 37 ms a round, against 43 ms for two). A batch of C / k
rows then goes without waiting for the rest: they come back while it computes and form the next one.

`c` is measured, not assumed: `Returns` times how long each pass's clients take to be back (from the
pass's end until as many rows arrived as it answered), less the lag, per further row. The gap between
arrivals cannot tell it: the loop writes a batch's answers before it reads the requests they bring
back, so those arrive in a clump, a fraction of `c` apart, and the time spent writing is invisible.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from .dispatch import GAP_WEIGHT

MOST_GROUPS = 4  # more groups pay more fixed costs than any loop time they could hide here
GAIN = 0.9  # split only for a round at least 10% shorter: a marginal model gain is within its error
PEAK_DECAY = 0.97  # what the clients' peak keeps per pass: 32 clients become 8 in about 45 passes
TRACKED = 2  # passes whose clients may still be coming back: the last two (two groups take turns)
STALE = 0.5  # seconds: clients not back by then are not a closed loop at this pace (they left, or think)


def round_seconds(groups: int, fixed: float, per_row: float, clients: int, back: float, lag: float) -> float:
    """Seconds per round of `clients` closed-loop clients in `groups` groups that take turns."""
    device, loop = groups * fixed + per_row * clients, clients * back
    if groups == 1:
        return device + lag + loop
    return max(device, loop, fixed + lag + (per_row * clients + loop) / groups)


def group_rows(fixed: float, per_row: float, clients: float, back: float, lag: float) -> int | None:
    """Rows at which a batch goes without waiting for the rest of `clients` (a fading peak: rounded), or
    None where one group is best (or nothing is known yet)."""
    count = round(clients)
    if count < 2 or back <= 0:
        return None
    one = round_seconds(1, fixed, per_row, count, back, lag)
    best, rounds = min(
        (round_seconds(k, fixed, per_row, count, back, lag), k) for k in range(1, min(MOST_GROUPS, count) + 1)
    )
    if rounds == 1 or best > GAIN * one:
        return None
    return math.ceil(count / rounds)


@dataclass
class Population:
    """The peak of requests outstanding, fading by PEAK_DECAY a pass so that it follows clients who
    leave, and `Returns`: how fast the clients of a pass come back."""

    peak: float = 0.0
    returns: Returns = field(default_factory=lambda: Returns())

    def arrived(self, outstanding: int, now: float = 0.0, rows: int = 0, lag: float = 0.0) -> None:
        self.peak = max(self.peak, float(outstanding))
        self.returns.arrived(now, rows, lag)

    def passed(self, now: float = 0.0, rows: int = 0) -> None:
        """After each pass (over `rows` rows, ended `now`): a peak not reached again fades."""
        self.peak *= PEAK_DECAY
        self.returns.ended(now, rows)

    def all_in(self, outstanding: int) -> bool:
        return self.peak >= 2 and outstanding >= self.peak

    def group_rows(self, fixed: float, per_row: float, lag: float) -> int | None:
        """`group_rows` for these clients: rows at which a batch goes without the rest."""
        return group_rows(fixed, per_row, self.peak, self.returns.per_row, lag)

    def describe(self, lag: float) -> str:
        back = self.returns.per_row
        return f"; clients back {lag * 1e3:.2f} ms after a pass, +{back * 1e3:.2f} ms each" if back else ""


@dataclass
class Returns:
    """How long each further client of a pass takes to come back: from its end until as many rows
    arrived as it answered, less the lag (the first one's), over the rows after the first (a running
    mean; passes of one row say nothing of it). An arrival pays off the newest pass that ended: in one group that
    is its own; in two that take turns, a group's clients are back before the other's pass ends, and
    one late is charged to the next pass, which reads shorter: a bias towards one group, never towards
    splitting. A pass whose clients left is forgotten, never charged to later ones."""

    per_row: float = 0.0
    _passes: deque[list[float]] = field(default_factory=deque)  # [ended, rows, rows still to come]

    def ended(self, now: float, rows: int) -> None:
        if rows <= 0:
            return
        if len(self._passes) >= TRACKED:
            self._passes.popleft()
        self._passes.append([now, float(rows), float(rows)])

    def arrived(self, now: float, rows: int, lag: float) -> None:
        left = float(rows)
        while left and self._passes:
            newest = self._passes[-1]
            paid = min(left, newest[2])
            newest[2] -= paid
            left -= paid
            if newest[2] > 0:
                continue
            self._passes.pop()
            window = now - newest[0]
            if window <= STALE and newest[1] > 1:
                sample = max(window - lag, 0.0) / (newest[1] - 1)
                self.per_row = (
                    sample if not self.per_row else self.per_row + GAP_WEIGHT * (sample - self.per_row)
                )
