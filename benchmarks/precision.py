"""Precision and compile options on the benchmark models, through the runtime's own forward path.

For each model and row count: the time of one forward pass (the runtime's `Predictor.run`: host
arrays in, host arrays out, transfers included) and the error against fp32, for fp32, `cast` and
`autocast` in bfloat16 and float16, and fp32 compiled with inductor (plus its compile time).

    python benchmarks/precision.py [--device cpu|cuda] [--rows 1,32,256] [--models mlp,conv]
                                   [--threads 1] [--repeat 50] [--no-compile] [--out FILE.md]

The error is max |got - fp32| / max |fp32| over a fixed input (seeded). Timings are the median of
`--repeat` passes after 5 unmeasured ones. On a GPU, run it with `--device cuda` and no `--threads`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.models import SPECS
from mlserver_torchflow.engine.compiling import CountingBackend, compile_module
from mlserver_torchflow.engine.inference import Predictor
from mlserver_torchflow.protocol.signature import Interface

MODES = [
    ("fp32", "keep", "cast"),
    ("cast bf16", "bfloat16", "cast"),
    ("autocast bf16", "bfloat16", "autocast"),
    ("cast fp16", "float16", "cast"),
    ("autocast fp16", "float16", "autocast"),
]


def predictor(name: str, device: torch.device, dtype: str, precision: str, compiled: bool) -> Predictor:
    module = SPECS[name].build().to(device)
    reduced = {"keep": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    if reduced is not None and precision == "cast":
        module = module.to(reduced)
    if compiled:
        module = compile_module(module, CountingBackend("inductor", "default"), name)
    return Predictor(module, device, reduced, Interface(None, None), precision=precision)


def timed(run: Predictor, x: np.ndarray, repeat: int) -> tuple[float, np.ndarray]:
    for _ in range(5):
        out = run.run([x])[0][1]
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        out = run.run([x])[0][1]
        samples.append(time.perf_counter() - started)
    return statistics.median(samples), out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rows", default="1,32,256")
    parser.add_argument("--models", default="mlp,conv")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    lines = [
        f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)",
        "",
        "| model | rows | mode | median ms | vs fp32 | max err / max abs fp32 |",
        "|---|---|---|---|---|---|",
    ]
    for name in args.models.split(","):
        modes = [(label, dtype, precision, False) for label, dtype, precision in MODES]
        if not args.no_compile:
            modes.append(("fp32 compiled", "keep", "cast", True))
        runs = {}
        for label, dtype, precision, compiled in modes:
            run = predictor(name, device, dtype, precision, compiled)
            if compiled:
                started = time.perf_counter()
                for rows in (int(r) for r in args.rows.split(",")):
                    run.run([SPECS[name].inputs(rows, seed=1)])
                lines.insert(
                    1,
                    f"{name}: inductor compile of every row count took {time.perf_counter() - started:.1f} s",
                )
            runs[label] = run
        for rows in (int(r) for r in args.rows.split(",")):
            x = SPECS[name].inputs(rows, seed=7)
            base, reference = timed(runs["fp32"], x, args.repeat)
            scale = float(np.abs(reference).max()) or 1.0
            for label, run in runs.items():
                seconds, out = (base, reference) if label == "fp32" else timed(run, x, args.repeat)
                error = float(np.abs(out.astype(np.float64) - reference).max()) / scale
                lines.append(
                    f"| {name} | {rows} | {label} | {seconds * 1e3:.3f} | {base / seconds:.2f}x | {error:.2e} |"
                )
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
