"""What an idle machine costs to wake: the same small piece of work, hot and right after a sleep.

A closed loop behind a simulated device idles through every pass, so the front end of each round (writing
the answers, the clients' replies, reading the next requests) runs on cores that just woke up. On a VM that
cost can be many times the hot cost, which the bound (the floor's saturated, hot f per request) does not
see. dispatch.py prints this once per run, beside the ideal floor that pays it as ours does.

    .venv/bin/python benchmarks/wake.py
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

IDLES_S = (0.001, 0.005, 0.020)  # about as long as the sim shapes' passes
TURNS = 120


def work_cpu_us(sleep_s: float, turns: int = TURNS) -> float:
    """Median thread CPU (µs) of a few small torch ops on an 8-row array, each right after `sleep_s`."""
    array = np.random.default_rng(0).random((8, 16), dtype=np.float32)
    seen = []
    for turn in range(turns):
        if sleep_s:
            time.sleep(sleep_s)
        started = time.thread_time()
        with torch.inference_mode():
            (torch.from_numpy(array)[:, :10] * 2 + 1).numpy().copy()
        if turn >= 10:
            seen.append(time.thread_time() - started)
    return statistics.median(seen) * 1e6


def describe() -> str:
    """One line: the work's CPU hot and after each idle, e.g. 'hot 12 µs; after 1 ms idle 31 µs (2.6×); ...'.
    On one torch thread, as the sims' passes run; the caller's thread count is put back."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        hot = work_cpu_us(0.0)
        after = [(s, work_cpu_us(s)) for s in IDLES_S]
    finally:
        torch.set_num_threads(threads)
    return f"hot {hot:.0f} µs; " + "; ".join(
        f"after {s * 1e3:g} ms idle {us:.0f} µs ({us / hot:.1f}×)" for s, us in after
    )


if __name__ == "__main__":
    print(describe())
