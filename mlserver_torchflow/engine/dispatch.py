"""When a batch goes to the device: a rule that weighs the rows about to arrive against the wait.

The batcher learns, online, two things and asks this module one question.
- `CostModel`: a pass over `n` rows costs `fixed + per_row * n` seconds, fit by exponentially
  weighted least squares on the measured passes (one fit per batch shape).
- `Arrivals`: the recent gap between arriving rows (an exponentially weighted mean per row).
- `hold(...)`: with `n` rows in hand, dispatch now, or hold for how long?

The rule. Running the `n` rows now serves them at `n / T(n)` rows per second of device time. Holding
for the next row, expected after `gap`, serves `(n + 1) / (gap + T(n + 1))`. Holding pays while

    (n + 1) / (gap + F + R (n + 1))  >  n / (F + R n)      <=>      n  <  F / gap

that is, while the rows expected during one fixed cost outnumber the rows in hand. The per-row cost
cancels: it is paid whether a row waits or not. So a lone client (its gap is at least one pass, so
`F / gap < 1`) is served at once; a launch-bound device under load holds until the burst of arrivals
has come in; a row-bound one (small `F`) hardly holds at all. A hold ends at the next arrival (the
question is asked again), when no row came for two gaps (the burst is over: nobody is coming), when
the batch is full, or at `max_batch_time` after the oldest request: the longest anyone waits for company.
It also ends once every client is in (`clients.Population`): in a closed loop, when the requests
waiting are as many as the peak of those outstanding, the rest of the burst would only be the two-gap
wait; and off-core, at the rows of a group, where closed-loop clients do better taking turns.

`CoreUse` tells whether the device computes on the server's own cores (CPU time of the executor
thread close to its wall time) or off them (a GPU, or anything that releases the GIL and waits).
Off-core, a second batch may be staged while one runs (`stage_next`), so the device never waits on
the event loop; on-core, it would only take the cores the running pass and the event loop need.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

DECAY = 0.9  # weight a cost sample keeps per newer one: about the last 10 passes count
GAP_WEIGHT = 0.2  # weight of the newest gap in the running mean: about the last 5 arrivals count
BURST_GAPS = 2.0  # no row for this many mean gaps: the burst is over
MIN_HOLD = 50e-6  # seconds: a shorter hold costs more in timer wake-ups than it could gain
# Executor-thread CPU time over wall time above which the pass computes on our cores. Low: a pass on our
# cores that waits for the GIL (the event loop holds it) reads 50-75% busy, one that waits on a device 1-2%.
ON_CORE = 0.25
LEAD = 0.002  # seconds before a pass is expected to end at which the next batch is handed over (off-core)


@dataclass
class CostModel:
    """Seconds per pass as `fixed + per_row * rows`, from weighted sums of the measured passes."""

    _w: float = 0.0
    _n: float = 0.0
    _nn: float = 0.0
    _t: float = 0.0
    _nt: float = 0.0
    _miss: float = 0.0  # weighted squared misses of the prediction made before each pass
    _per_row: float | None = None  # the last per-row cost that varied sizes could separate

    def observe(self, rows: int, seconds: float) -> None:
        if self._w:
            miss = seconds - self.predict(rows)
            self._miss = self._miss * DECAY + miss * miss
        for name, value in (
            ("_w", 1.0),
            ("_n", rows),
            ("_nn", rows * rows),
            ("_t", seconds),
            ("_nt", rows * seconds),
        ):
            setattr(self, name, getattr(self, name) * DECAY + value)

    def spread(self) -> float:
        """How far off a prediction typically is (seconds: a weighted RMS of the recent misses)."""
        return math.sqrt(self._miss / self._w) if self._w else 0.0

    @property
    def known(self) -> bool:
        return self._w > 0

    def fit(self) -> tuple[float, float]:
        """(fixed, per_row), both >= 0. Passes of one size only cannot separate the two: the last
        per-row cost that varied sizes showed is kept then, else all of it is taken as fixed (the
        cost a GPU's small batches mostly have). A batcher whose batches settle on one size would
        otherwise come to see a row-bound device as launch-bound, and hold for rows that do not pay."""
        if not self._w:
            return 0.0, 0.0
        mean_n, mean_t = self._n / self._w, self._t / self._w
        variance = self._nn / self._w - mean_n * mean_n
        if variance >= 0.25:  # sizes vary (a spread of half a row or more)
            self._per_row = max((self._nt / self._w - mean_n * mean_t) / variance, 0.0)
        # at most all of the time: a fit that says "no fixed part" is a line through zero
        per_row = min(self._per_row or 0.0, mean_t / mean_n)
        return mean_t - per_row * mean_n, per_row

    def predict(self, rows: int) -> float:
        fixed, per_row = self.fit()
        return fixed + per_row * rows


def toward(mean: float, sample: float) -> float:
    """A running mean that starts at its first sample (0: none yet) and gives each newer one GAP_WEIGHT."""
    return sample if not mean else mean + GAP_WEIGHT * (sample - mean)


@dataclass
class Arrivals:
    """The running mean gap between arriving rows (infinite until two requests have come), and the
    return lag: how long after a pass ends the next request comes.

    The first arrival after a pass ended measures the lag, not the gap. In a closed loop it is one of
    that pass's clients coming back, and the time since the previous arrival is a round trip plus a
    pass: counted as a gap, it made every burst look sparse, so that a batch went as soon as the
    first client was back, and clients split into groups that alternate on the device.

    Unless the arrival before it came alone too (first after its pass, nobody after it): requests
    then come one a pass, as a lone client's do, and the interval is their gap. Without this a lone
    client after a burst never sampled a gap again, kept the burst's, and waited two of them each time."""

    gap: float = math.inf
    lag: float = 0.0
    last: float | None = None
    owed: int = 0  # rows the last pass answered, less those arrived since: clients on their way back
    _ended: float | None = None  # when the last pass ended, until the next arrival samples the lag
    _alone: bool = False  # the last arrival was the first after a pass, and none has come since

    def arrived(self, now: float, rows: int) -> None:
        ended, self._ended = self._ended, None
        self.owed = max(self.owed - rows, 0)
        first = self.last is not None and ended is not None and self.last <= ended <= now
        if first:
            self.lag = toward(self.lag, now - (ended or 0.0))
        if self.last is not None and (self._alone or not first):
            sample = max(now - self.last, 0.0) / max(rows, 1)
            self.gap = sample if math.isinf(self.gap) else self.gap + GAP_WEIGHT * (sample - self.gap)
        self._alone = first
        self.last = now

    def ended(self, now: float, rows: int) -> None:
        """A pass over `rows` rows ended `now`: its clients, if they wait on it, start coming back after
        the lag, and until as many rows arrived more are owed."""
        self._ended = now
        self.owed = rows

    def returns_at(self, ends: float) -> float:
        """When the first answer of a pass ending at `ends` is expected back as a new request."""
        return ends + self.lag

    def quiet(self, now: float, ends: float, freed: float) -> float:
        """Seconds no row has come, for the burst's end. A pass's answers (it ends, or ended, at `ends`)
        bring requests back in a closed loop, the first after the lag: while none came since, the
        burst is not over before then (negative). Else counted from the last arrival or `freed`."""
        last = self.last or 0.0
        return now - max(last, self.returns_at(ends) if ends >= last else freed)


def hold(
    rows: int,
    waited: float,
    since_last: float,
    gap: float,
    fixed: float,
    max_rows: int,
    max_wait: float,
    owed: int = 0,
) -> float:
    """Seconds to hold `rows` for company (0: dispatch now). `waited` is the oldest request's time in the
    queue, `since_last` the time since the last arrival, `owed` the rows the last pass answered whose
    clients are not back yet; the caller asks again at the next arrival."""
    if rows >= max_rows or waited >= max_wait or gap <= 0 or math.isinf(gap):
        return 0.0
    if rows >= fixed / gap:  # the rows expected during one fixed cost are fewer than those in hand
        return 0.0
    left = max_wait - waited
    if not owed:  # nobody came for two gaps: the burst is over (owed rows come, however slowly)
        left = min(left, BURST_GAPS * gap - since_last)
    return left if left > MIN_HOLD else 0.0


@dataclass
class CoreUse:
    """Whether passes compute on the server's cores: a running mean of thread CPU / wall time, or a
    declared answer (`True`: on our cores, `False`: off them) that measurements never change."""

    declared: bool | None = None
    _ratio: float | None = None

    @classmethod
    def of(cls, compute_on: str, device_type: str) -> CoreUse:
        """From the `compute_on` setting (`host`, `device`, or `auto`: measured, except on CUDA, whose
        kernels run on the GPU while the host thread's CPU time is spent spinning in syncs)."""
        declared = {"host": True, "device": False}.get(compute_on)
        return cls(False if declared is None and device_type == "cuda" else declared)

    def observe(self, cpu: float, wall: float) -> None:
        if wall <= 0:
            return
        ratio = min(cpu / wall, 1.0)
        self._ratio = ratio if self._ratio is None else self._ratio + GAP_WEIGHT * (ratio - self._ratio)

    @property
    def on_core(self) -> bool:
        if self.declared is not None:
            return self.declared
        return self._ratio is None or self._ratio > ON_CORE  # unmeasured: the cautious answer

    @property
    def depth(self) -> int:
        """Passes in flight at once: one on our cores; off them, the next one is staged meanwhile."""
        return 1 if self.on_core else 2

    def describe(self) -> str:
        if self.declared is not None:
            return "host (declared)" if self.declared else "device (declared)"
        if self._ratio is None:
            return "host (not measured yet)"
        where = "host" if self.on_core else "device"
        return f"{where} (measured: the pass's thread is busy {self._ratio:.0%} of its time)"


def lead(cost: CostModel, staging: CostModel, rows: int) -> float:
    """Off-core: how long before the running pass ends to hand over the next batch of `rows`: early
    enough for the fit's usual miss, never more than a quarter of the pass, plus the time to stage it,
    so that a pipeline's copy in overlaps the running pass."""
    return min(LEAD + 2 * cost.spread(), 0.25 * cost.predict(rows)) + staging.predict(rows)


def stage_next(now: float, running_ends: float, lead: float) -> bool:
    """Off-core only: hand the next batch over while the running one ends within `lead` seconds, so
    that it starts the moment the device frees, with everything that arrived until then in it."""
    return now >= running_ends - lead


class Alarm:
    """What the dispatch loop sleeps on: an arrival, a pass's end, or a timer wakes it."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def set(self) -> None:
        self._event.set()

    async def sleep(self, timeout: float | None) -> None:
        """Until woken, or `timeout` seconds. A timer sets the same event: no timeout exception, whose
        type differs between Python versions, and no task per wait as `asyncio.wait_for` makes."""
        self._event.clear()
        timer = None if timeout is None else asyncio.get_running_loop().call_later(timeout, self._event.set)
        try:
            await self._event.wait()
        finally:
            if timer is not None:
                timer.cancel()
