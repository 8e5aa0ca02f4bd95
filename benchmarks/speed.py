"""How fast this machine runs from moment to moment: a fixed piece of work, timed over and over.

A VM's host can slow it with nothing inside it to see: no other process runs, yet the same work takes more
time (run s27: the client's CPU per request doubled, the floor's MLP fell from 3,932 to 1,952 req/s).
`other cpu` in the reports catches a busy neighbour inside the VM; this shows the host. Every `--every`
seconds it runs the same small mix of Python and numpy work (warmed up first, as an idle core runs the
first work slow, see wake.py; then the least of a few tries, so that one preemption does not count) and
prints its time against the fastest seen, then the share of probes over `SLOW`.

    .venv/bin/python benchmarks/speed.py [--seconds 20] [--every 0.2]

On this 2-core VM (s28) the speed is bimodal: probes read 1.0× or about 1.65× the fastest, switching
within a fraction of a second to a few seconds; 60–75% of the probes were slow over 20 s (two tries). So one probe between two
benchmark points says little about the 4 s window before it, and re-measuring "slow" points would mostly
re-roll the dice: compare only within one run, and read ratios to the ideal floor measured beside.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

SLOW = 1.35  # a probe this many times the fastest one counts as slow
TRIES = 5
WARM = 5


def _work() -> float:
    """A few hundred µs of what a server does per request: Python objects, small numpy copies, a matmul."""
    started = time.perf_counter()
    total = 0
    for i in range(3000):
        total += len(str(i))
    array = np.arange(4096, dtype=np.float32).reshape(64, 64)
    for _ in range(20):
        array = (array @ array.T) * 1e-6 + 1.0
    assert total > 0 and math.isfinite(float(array[0, 0]))
    return time.perf_counter() - started


class Speed:
    """The running least time of the work; `probe()` returns how much slower the machine is now (≥ 1)."""

    def __init__(self) -> None:
        self.best = math.inf

    def probe(self) -> float:
        for _ in range(WARM):
            _work()
        now = min(_work() for _ in range(TRIES))
        self.best = min(self.best, now)
        return now / self.best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--every", type=float, default=0.2)
    args = parser.parse_args()
    speed, seen = Speed(), []
    ends = time.monotonic() + args.seconds
    while time.monotonic() < ends:
        seen.append(speed.probe())
        time.sleep(args.every)
    print(" ".join(f"{x:.2f}" for x in seen))
    slow = sum(x >= SLOW for x in seen)
    print(f"{len(seen)} probes; fastest {speed.best * 1e6:.0f} µs; {slow / len(seen):.0%} at ≥ {SLOW}× that")


if __name__ == "__main__":
    main()
