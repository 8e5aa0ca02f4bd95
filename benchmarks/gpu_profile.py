"""`--profile`, the server's side: ours again, under cProfile, over one window at the top concurrency.

Why cProfile of the server's main thread: on a GPU the forward pass runs on the model's executor thread
and the device, while everything else a request costs (gRPC, MLServer's conversions, our codec and
batcher) runs on the main thread's event loop: that thread is what cProfile sees. The server runs under
this file as a launcher that turns the profiler on at SIGUSR1 and off (writing the stats) at SIGUSR2, sent
at the window's edges, so start-up and shutdown stay out of the table. Its overhead slows that thread,
so the window is a separate, unchecked run whose figures are not the measured ones. The device's side
comes from gpu_raw.py's torch.profiler table.

    python benchmarks/gpu_profile.py STATS.prof /path/to/mlserver start DIR     # the launcher
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import runpy
import signal
import sys
import time
from pathlib import Path
from typing import Any

TOP = 20


def cprofile_window(
    args: argparse.Namespace,
    cfg: Any,
    name: str,
    path: Path | None,
    spec: Any,
    extra: dict[str, Any] | None,
    iface: Any,
    reference: Any,
    cpus: tuple[list[int] | None, list[list[int]] | None],
) -> str:
    """cProfile's top functions (own time) of the server's main thread over one load window."""
    from measure import Point, measure
    from servers import start_server

    stats = args.work / "profile" / f"{name}.prof"
    stats.parent.mkdir(parents=True, exist_ok=True)
    stats.unlink(missing_ok=True)
    prefix = (sys.executable, __file__, str(stats))
    server = start_server(cfg, name, path or Path(), cpus[0], spec.row_shape, extra, prefix)

    def edge(which: str) -> None:
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGUSR1 if which == "start" else signal.SIGUSR2)

    try:
        point = Point(name, cfg.key, cfg.group, "grpc", args.rows[0], max(args.concurrency))
        short = argparse.Namespace(**{**vars(args), "duration": min(args.duration, 5.0), "warmup": 1.0})
        measure(point, server, iface, spec, reference, short, cpus[1], 1.0, edge)
        deadline = time.monotonic() + 30
        while not stats.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        server.stop()
    if not stats.exists():
        return f"no profile written ({stats} missing; see {server.log_path})"
    text = io.StringIO()
    table = pstats.Stats(str(stats), stream=text)
    per_reply = 1e3 * table.total_tt / max(point.ok, 1)  # type: ignore[attr-defined]
    table.sort_stats("tottime").print_stats(TOP)
    lines = text.getvalue().splitlines()
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    header = (
        f"{point.rps:,.0f} req/s under the profiler; main thread profiled {per_reply:.3f} ms per reply "
        f"({point.ok} replies in {short.duration:g} s)"
    )
    return "\n".join([header, "", *lines[start:]])


def launcher(argv: list[str]) -> None:
    """Runs the `mlserver` script given, with the profiler switched by SIGUSR1 (on) / SIGUSR2 (off, dump)."""
    stats, script, *rest = argv
    profiler = cProfile.Profile()

    def stop(*_: Any) -> None:
        profiler.disable()
        profiler.dump_stats(stats)

    signal.signal(signal.SIGUSR1, lambda *_: profiler.enable())
    signal.signal(signal.SIGUSR2, stop)
    sys.argv = [script, *rest]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    launcher(sys.argv[1:])
