"""The raw in-process forward: the bar that the served figures are held to, and the reference answers.

Run by gpu.py as a subprocess (own process: no server beside it on the device, and it may import the
runtime, which a process holding tritonclient may not: both define the `inference.*` protobufs). It loads
the model with the runtime's own loader and dtype cast, so the raw module is the one the server runs, and
measures at each batch size, after warm-up, with a synchronise after every call (monotonic clock):

* ``forward``: ``module(x)`` with ``x`` already on the device: the raw forward of the goals;
* ``runtime pass``: the runtime's ``Predictor.run`` (numpy in, host copies, numpy out), what one served
  batch costs the server's executor thread.

It also computes, one row at a time, the reference outputs for the inputs the load generator will send
(regenerated from their seeds), and with ``--profile`` writes torch.profiler's top operators of the runtime
pass at the largest batch.

    python benchmarks/gpu_raw.py --model DIR --key resnet50 --scale tiny --device cpu --dtype keep \
        --batches 1,8,32 --seeds 1:999,1:100000 --out /tmp/raw
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from mlserver_torchflow.engine.device import resolve_device, target_dtype  # noqa: E402
from mlserver_torchflow.engine.inference import Predictor  # noqa: E402
from mlserver_torchflow.engine.layout import locate  # noqa: E402
from mlserver_torchflow.engine.loading import load_module  # noqa: E402
from mlserver_torchflow.protocol.signature import interface_from_mlmodel  # noqa: E402


def timed(call: Any, device: torch.device, seconds: float, warmup: int = 3) -> list[float]:
    """Per-call seconds of `call()`, each followed by a device synchronise, for about `seconds`."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        call()
    sync()
    latencies: list[float] = []
    started = time.perf_counter()
    while len(latencies) < 5 or (time.perf_counter() - started < seconds and len(latencies) < 5000):
        t0 = time.perf_counter()
        call()
        sync()
        latencies.append(time.perf_counter() - t0)
    return latencies


def summary(latencies: list[float], rows: int) -> dict[str, float]:
    ms = np.asarray(latencies) * 1e3
    return {
        "calls": len(latencies),
        "rows_per_s": rows * len(latencies) / float(np.sum(latencies)),
        "mean_ms": float(ms.mean()),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def profile(predictor: Predictor, array: np.ndarray, device: torch.device) -> str:
    """torch.profiler's top operators (self time) over five runtime passes."""
    from torch.profiler import ProfilerActivity

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(5):
            predictor.run([array])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return str(prof.key_averages().table(sort_by=key, row_limit=15, max_name_column_width=60))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, required=True, help="the saved MLflow model folder")
    parser.add_argument("--key", required=True, help="gpu_models key (resnet50, bert)")
    parser.add_argument("--scale", default="full")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="keep", choices=("keep", "float16", "bfloat16"))
    parser.add_argument("--batches", default="1,8,32,64")
    parser.add_argument("--seconds", type=float, default=2.0, help="per batch size and kind")
    parser.add_argument("--seeds", default="", help="ROWS:SEED,... inputs to answer (references)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    import gpu_models

    spec = gpu_models.specs(args.scale)[args.key]
    files = locate(str(args.model))
    device = resolve_device(args.device)
    module, fmt, _ = load_module(files, device, target_dtype(args.dtype))
    predictor = Predictor(module, device, target_dtype(args.dtype), interface_from_mlmodel(files.mlmodel))
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"format": fmt.value, "device": str(device), "forward": {}, "runtime_pass": {}}
    if device.type == "cuda":
        result["device_name"] = torch.cuda.get_device_name(device)

    batches = [int(b) for b in args.batches.split(",")]
    for rows in batches:
        array = spec.inputs(rows, seed=4242)
        x = torch.from_numpy(array).to(device)
        if x.is_floating_point() and predictor.float_dtype is not None:
            x = x.to(predictor.float_dtype)
        with torch.inference_mode():
            result["forward"][rows] = summary(timed(lambda x=x: module(x), device, args.seconds), rows)
        result["runtime_pass"][rows] = summary(
            timed(lambda a=array: predictor.run([a]), device, args.seconds), rows
        )
        print(f"[raw] {args.key} batch {rows}: {json.dumps(result['forward'][rows])}", flush=True)

    references: dict[str, np.ndarray] = {}
    for item in filter(None, args.seeds.split(",")):
        rows, seed = (int(v) for v in item.split(":"))
        references[f"{rows}:{seed}"] = predictor.run([spec.inputs(rows, seed=seed)])[0][1]
    np.savez(args.out / "references.npz", **references)  # type: ignore[arg-type]
    if args.profile:
        (args.out / "profile.txt").write_text(profile(predictor, spec.inputs(max(batches), 4242), device))
    (args.out / "raw.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
