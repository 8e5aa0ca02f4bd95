"""The clients as the batcher sees them: how many keep requests outstanding, how fast they come back,
how many groups they should form on a device off the server's cores, and whether, on ours, batches
should wait for all of them.

`Population` keeps the peak of requests outstanding (queued plus computing). Closed-loop clients (each
waits for its answer before it sends again) have all come back when the requests waiting (none
computing) are as many as that peak: nobody else is coming, and holding longer only adds latency.
While a pass computes, its clients are still to come back, so the hold rule decides; an open loop
seldom sits at its recent peak, so there too.

Groups. Closed-loop clients all in one batch leave the device idle while the event loop writes their
answers and reads their next requests: a round costs

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

The model only proposes; the rows served decide (trials.py): the lag and `c` measured in one
arrangement do not hold in the other, and where the model's margin is thin (8 clients of a 5 ms fixed
cost here) two groups served fewer requests than one. Once proposed, the model no longer decides:
groups in place change what it is fed (the lag shrinks), so that it withdrew them a few passes into each
trial, and proposed them again from the rule's measurements SETTLED passes later: never judged, never
blocked, a quarter of the passes of 8 clients of the middle shape over REST went in pairs of 4 rows. So
groups stay for the trial, and where kept for KEPT passes, as many groups as first proposed (their rows
follow the clients' peak); only clients who leave (a peak under 2) end them early. Other clients (a peak
LOAD_CHANGE times higher or lower), or an idle spell (STALE between passes), void a trial and the rates it
compares: a pause between two loads once made the rule's baseline a quarter of its rate, and kept groups.

Patience. On our cores the rule's premise fails: a pass does not run on a device that idles while
requests wait, it takes the cores (and the GIL) that the event loop needs to read them, so each pass
costs the loop its fixed cost again. Where closed-loop clients keep the loop busy, small batches
then starve it, and it reads ever fewer requests a pass: the benchmark's MLP over gRPC at 32 clients
ran passes of 3 rows, each 1.1 ms long on a thread that waited for the GIL, at 1,250-1,390 requests a
second; waiting for every client (all in, full, or `max_batch_time`) ran 14-24 rows a pass at
1,620-1,720. Patience is tried where batches hold under PATIENT_SHARE of the clients' peak and the
passes take BUSY of the time, and kept where it serves more; a wait that ends at `max_batch_time`
with under PATIENT_SHARE of the peak counts against it (an open loop, or clients that think, do not
wait on each other). An open loop's trials cost their waits, ever less often (trials.py).

`c` is measured, not assumed: `Returns` times how long each pass's clients take to be back (from the
pass's end until as many rows arrived as it answered), less the lag, per further row. The gap between
arrivals cannot tell it: the loop writes a batch's answers before it reads the requests they bring
back, so those arrive in a clump, a fraction of `c` apart, and the time spent writing is invisible.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from .dispatch import DECAY, toward
from .trials import Trial

MOST_GROUPS = 4  # more groups pay more fixed costs than any loop time they could hide here
SPLIT = 0.9  # groups are tried for a round at least 10% shorter (the trial then checks the gain is real)
KEPT = 2000  # passes kept groups or patience last before the rule's rate is measured again
PATIENT_SHARE = 0.5  # patience is tried where batches hold under this share of the clients' peak
BUSY = 0.5  # and the passes take at least this share of the time
PEAK_DECAY = 0.97  # what the clients' peak keeps per pass: 32 clients become 8 in about 45 passes
TRACKED = 2  # passes whose clients may still be coming back: the last two (two groups take turns)
LOAD_CHANGE = 1.5  # a peak of clients this many times higher or lower than the trials' rates were taken at
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
    if rounds == 1 or best > SPLIT * one:
        return None
    return math.ceil(count / rounds)


@dataclass
class Population:
    """The peak of requests outstanding, fading by PEAK_DECAY a pass so that it follows clients who
    leave; `Returns`: how fast the clients of a pass come back; and two trials: groups that take turns
    (off our cores), and patience (on them)."""

    peak: float = 0.0
    returns: Returns = field(default_factory=lambda: Returns())
    groups: Trial = field(default_factory=lambda: Trial(kept=KEPT))
    patience: Trial = field(default_factory=lambda: Trial(kept=KEPT))
    _rows: float = 0.0  # rows served, passes, and seconds between pass ends, decayed: for patience
    _passes: float = 0.0
    _busy: float = 0.0  # seconds the passes took
    _seconds: float = 0.0
    _last_end: float | None = None
    _groups: int = 0  # how many groups the model last proposed: they take turns, on trial or kept
    _load: float = 0.0  # the clients' peak the trials' rates were taken at

    def arrived(self, outstanding: int, now: float = 0.0, rows: int = 0, lag: float = 0.0) -> None:
        self.peak = max(self.peak, float(outstanding))
        self.returns.arrived(now, rows, lag)
        if not LOAD_CHANGE * self._load >= self.peak >= self._load / LOAD_CHANGE:
            self._load = self.peak  # other clients: a rate measured before compares nothing
            self._restart()

    def passed(self, now: float = 0.0, rows: int = 0, seconds: float = 0.0) -> None:
        """After each pass (over `rows` rows, ended `now`, `seconds` long): a peak not reached again
        fades, and the trials are judged once over."""
        self.peak *= PEAK_DECAY
        self.returns.ended(now, rows)
        if self._last_end is not None and now - seconds - self._last_end > STALE:
            self._restart()  # an idle spell before this pass: not a rate of these clients
        elif self._last_end is not None and rows:
            self._rows = self._rows * DECAY + rows
            self._passes = self._passes * DECAY + 1
            self._busy = self._busy * DECAY + seconds
            self._seconds = self._seconds * DECAY + (now - self._last_end)
        self._last_end = now if rows else self._last_end
        for trial in (self.groups, self.patience):
            trial.passed(now, rows)

    def _restart(self) -> None:
        """The decayed sums and the trials' rates start afresh (other clients, or after an idle spell)."""
        self._rows = self._passes = self._busy = self._seconds = 0.0
        for trial in (self.groups, self.patience):
            trial.restart()

    def all_in(self, outstanding: int) -> bool:
        return self.peak >= 2 and outstanding >= self.peak

    def group_rows(self, fixed: float, per_row: float, lag: float) -> int | None:
        """`group_rows` for these clients: rows at which a batch goes without the rest."""
        trial = self.groups
        if not trial.on and not trial.may_start():  # blocked, or not settled yet (on: never blocked)
            return None
        rows = group_rows(fixed, per_row, self.peak, self.returns.per_row, lag)
        if rows is not None:  # how many it proposed (rows = ceil(peak / groups))
            self._groups = math.ceil(round(self.peak) / rows)
        elif trial.on and self.peak >= 2:  # the model is fed by the arrangement in place: not asked
            rows = math.ceil(round(self.peak) / self._groups)
        if rows is None:
            if trial.on:
                trial.stop()
            return None
        if not trial.on:
            trial.start()
        return rows if trial.on else None

    def patient(self) -> bool:
        """On our cores: should a batch wait for every client (all in, full, or `max_batch_time`)? Tried
        where batches hold under PATIENT_SHARE of the clients' peak and the passes keep the device busy
        (BUSY of the time), kept where it serves more."""
        trial = self.patience
        if trial.on and self.peak < 2:
            trial.stop()  # a lone client: nobody to wait for
        elif (
            trial.may_start()
            and self.peak >= 2
            and self._rows < PATIENT_SHARE * self.peak * self._passes
            and self._busy > BUSY * self._seconds
        ):
            trial.start()
        return trial.on

    def waited_out(self, rows: int) -> None:
        """A patient batch goes at `max_batch_time` with `rows`: under PATIENT_SHARE of the peak, the
        wait brought too few to be worth it (Trial.missed)."""
        if rows < PATIENT_SHARE * self.peak:
            self.patience.missed()

    def describe(self, lag: float) -> str:
        back = self.returns.per_row
        if self.patience.on:
            return "; batches wait for every client" + (" (on trial)" if self.patience.on_trial else "")
        if not back:
            return ""
        if self.groups.on:
            state = "groups take turns (on trial)" if self.groups.on_trial else "groups take turns"
        else:
            state = "one group (groups did not pay)" if self.groups.blocked else "one group"
        return f"; clients back {lag * 1e3:.2f} ms after a pass, +{back * 1e3:.2f} ms each; {state}"


@dataclass
class Returns:
    """How long each further client of a pass takes to come back: from its end until as many rows
    arrived as it answered, less the lag (the first one's), over the rows after the first (a running
    mean; passes of one row say nothing of it). An arrival pays off the newest pass that ended: in one
    group that is its own; in two that take turns, a group's clients are back before the other's pass
    ends, and one late is charged to the next pass, which reads shorter: a bias towards one group,
    never towards splitting. A pass whose clients left is forgotten, never charged to later ones."""

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
                self.per_row = toward(self.per_row, max(window - lag, 0.0) / (newest[1] - 1))
