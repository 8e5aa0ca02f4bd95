"""The device machine's short checks (scripts/device_check.sh), each printing one JSON object.

    python benchmarks/device_probe.py copies  [--mb 256]            # pinned vs pageable host->device GB/s
    python benchmarks/device_probe.py graphs                        # CUDA graphs compiled on a new thread
    python benchmarks/device_probe.py stages  [--scale full|tiny]   # one ResNet-50 batch, stage by stage

On CPU (the CI dry run) each runs the same code where it can and says what it could not measure.
`stages` times what one served batch costs, in the runtime's own order: stage (each request's rows written
once into the pinned buffer, padding zeroed: engine/transfers.py), copy in, forward, copy out; each stage
synchronised and timed on the monotonic clock, the median of `--repeats`; then the milliseconds per batch
one after another and pipelined (two slots in flight), and torch.profiler's top operators of one pass
(written beside, with `--trace`, as a Chrome trace).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def _device() -> torch.device:
    return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copies(mb: int) -> dict[str, Any]:
    device = _device()
    if device.type != "cuda":
        return {"device": "cpu", "skipped": "no CUDA: host-device copies do not exist here"}
    n = mb * 2**20 // 4
    found = {"device": torch.cuda.get_device_name(device), "mb": mb}
    for kind, pinned in (("pageable", False), ("pinned", True)):
        host = torch.empty(n, dtype=torch.float32, pin_memory=pinned)
        dest = torch.empty(n, dtype=torch.float32, device=device)
        dest.copy_(host, non_blocking=pinned)
        _sync(device)
        times = []
        for _ in range(5):
            started = time.monotonic()
            dest.copy_(host, non_blocking=pinned)
            _sync(device)
            times.append(time.monotonic() - started)
        found[f"{kind}_h2d_gb_s"] = round(n * 4 / statistics.median(times) / 1e9, 2)
    return found


def graphs() -> dict[str, Any]:
    """reduce-overhead from a thread that did not import inductor: without the runtime's thread state
    torch 2.11 fails `_is_key_in_tls`; with it (patches/torch_compile.py) the graph records and replays."""
    from mlserver_torchflow.patches.torch_compile import cudagraph_thread_state

    device = _device()
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8)).to(device)
    compiled = torch.compile(model, mode="reduce-overhead")
    torch.compiler.cudagraph_mark_step_begin()  # imports cudagraph_trees on this (the main) thread
    results: dict[str, Any] = {"device": str(device), "torch": torch.__version__}

    def run(setup: bool) -> str:
        try:
            if setup:
                cudagraph_thread_state()
            x = torch.randn(4, 64, device=device)
            with torch.inference_mode():
                for _ in range(3):
                    torch.compiler.cudagraph_mark_step_begin()
                    out = compiled(x)
            _sync(device)
            return f"ok {tuple(out.shape)}"
        except Exception as err:
            return f"{type(err).__name__}: {str(err)[:200]}"

    for setup in (False, True):
        box: list[str] = []
        worker = threading.Thread(target=lambda s=setup, b=box: b.append(run(s)))
        worker.start()
        worker.join(300)
        results["with_thread_state" if setup else "without_thread_state"] = box[0] if box else "hung"
    return results


def stages(scale: str, rows: int, repeats: int, trace: Path | None) -> dict[str, Any]:
    from gpu_models import specs

    from mlserver_torchflow.engine.inference import Predictor
    from mlserver_torchflow.engine.transfers import Transfers
    from mlserver_torchflow.protocol.signature import Interface

    device = _device()
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    spec = specs(scale)["resnet50"]
    model = spec.build().to(device=device, dtype=dtype).eval()
    requests = [[spec.inputs(1, seed)] for seed in range(rows - 3)]  # 3 rows short: the pad pads
    predictor = Predictor(model, device, dtype, Interface(None, None))
    # On CPU the staging path runs unpinned, without streams (its tests' twin).
    predictor.transfers = t = Transfers(device, pin=device.type == "cuda", stage=True)
    times: dict[str, list[float]] = {k: [] for k in ("stage", "copy_in", "forward", "copy_out")}
    with torch.inference_mode():
        for i in range(repeats + 2):
            slot = t.acquire()
            t0 = time.monotonic()
            # The runtime's own write: each request's rows once into pinned memory, padding zeroed.
            staged = t._write(slot, 0, [r[0] for r in requests], rows, dtype)
            t1 = time.monotonic()
            x = staged.to(device, non_blocking=True)
            _sync(device)
            t2 = time.monotonic()
            y = model(x)
            _sync(device)
            t3 = time.monotonic()
            t.finish(slot, t.start_out(slot, [y]), [torch.float32])
            t.release(slot)
            t4 = time.monotonic()
            if i >= 2:  # two warm-up passes
                for key, took in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                    times[key].append(took * 1e3)
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as prof:
            predictor.finish(predictor.launch(requests, rows))
    if trace is not None:
        prof.export_chrome_trace(str(trace))
    sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    return {
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "model": spec.name,
        "rows": rows,
        "input_mb": round(staged.numel() * staged.element_size() / 2**20, 2),
        "median_ms": {k: round(statistics.median(v), 3) for k, v in times.items()},
        "per_batch_ms": _pipelined(predictor, requests, rows, max(repeats, 4)),
        "profile_top": prof.key_averages().table(sort_by=sort, row_limit=12),
    }


def _pipelined(predictor: Any, requests: list[list[np.ndarray]], rows: int, batches: int) -> dict[str, float]:
    """Milliseconds per batch over `batches` batches: one after another (stage, compute, copy back,
    then the next), and pipelined as the runtime serves them (launched on this thread, finished on
    another, two slots in flight)."""
    from concurrent.futures import ThreadPoolExecutor

    started = time.monotonic()
    for _ in range(batches):
        predictor.finish(predictor.launch(requests, rows))
    sequential = (time.monotonic() - started) / batches
    with ThreadPoolExecutor(max_workers=1) as collector:
        started = time.monotonic()
        done = [collector.submit(predictor.finish, predictor.launch(requests, rows)) for _ in range(batches)]
        for future in done:
            future.result()
        pipelined = (time.monotonic() - started) / batches
    return {"sequential": round(sequential * 1e3, 3), "pipelined": round(pipelined * 1e3, 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="check", required=True)
    sub.add_parser("copies").add_argument("--mb", type=int, default=256)
    sub.add_parser("graphs")
    st = sub.add_parser("stages")
    st.add_argument("--scale", default="full", choices=("full", "tiny"))
    st.add_argument("--rows", type=int, default=64)
    st.add_argument("--repeats", type=int, default=10)
    st.add_argument("--trace", type=Path)
    a = p.parse_args()
    if a.check == "copies":
        found = copies(a.mb)
    elif a.check == "graphs":
        found = graphs()
    else:
        found = stages(a.scale, a.rows, a.repeats, a.trace)
    print(json.dumps(found, default=str))


if __name__ == "__main__":
    main()
