"""Soak test: a real `mlserver start` under steady mixed load for N minutes, every reply checked.

    python scripts/soak.py                      # 10 minutes, 64 clients, the example-like MLP, batching on
    python scripts/soak.py --minutes 2 --json soak.json
    python scripts/soak.py --model /path/to/mlflow/model --minutes 30

It starts the server itself (TorchFlowRuntime with its batcher on, `parallel_workers: 0`), over a model
folder it builds in a temporary directory (the example MLP of scripts/make_example.py, saved as pt2) or
the MLflow model given with `--model`. Half of the `--concurrency` clients speak REST (JSON), half gRPC
(raw tensors), each in a closed loop on one asyncio event loop. Every request carries 1..`--max-rows`
rows drawn from a pool of distinct inputs whose outputs were computed in-process beforehand (the
module's own forward pass), so each reply is compared with the expected output of its own input: a
mixed-up reply (another client's rows, in a batch) counts as wrong.

Reported per window (a minute, or a quarter of a short run): requests, errors, wrong answers, p50 and
p99 latency, and the server's resident memory (all processes of its group, from /proc). The first
window is warm-up; p99 drift compares the last window with the first one after warm-up, and RSS growth
the median RSS of the last window with that of the first one after warm-up.

Goals: 0 errors, 0 wrong answers, RSS growth under `--max-rss-growth` percent (default 5). The exit
code is 0 when every goal is met, 1 when one is missed, 2 when the run could not start.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.server: the same `mlserver start` wrapper the tests use

V2 = {
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
    np.dtype(np.float16): "FP16",
    np.dtype(np.int64): "INT64",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int16): "INT16",
    np.dtype(np.int8): "INT8",
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.bool_): "BOOL",
}
RTOL, ATOL = 1e-4, 1e-4  # a batched forward may round differently; a mixed-up reply is off by O(1)
TIMEOUT_S = 30.0


@dataclass
class Item:
    """One pooled request: its inputs, its pre-serialized bodies, and the outputs it must get back."""

    rows: int
    rest_body: bytes
    grpc_request: Any
    expected: list[np.ndarray]


@dataclass
class Stats:
    samples: list[tuple[float, float, str, str]] = field(
        default_factory=list
    )  # (t, latency s, transport, outcome)
    rss: list[tuple[float, int]] = field(default_factory=list)
    error_examples: list[str] = field(default_factory=list)

    def record(self, t: float, latency: float, transport: str, outcome: str, detail: str = "") -> None:
        self.samples.append((t, latency, transport, outcome))
        if outcome != "ok" and len(self.error_examples) < 10:
            self.error_examples.append(f"{transport} {outcome}: {detail[:300]}")


# --- the model and its reference forward ----------------------------------------------------------


def build_default_model(folder: Path) -> tuple[Path, Any]:
    """The example MLP (scripts/make_example.py), saved as pt2 like the example."""
    import mlflow.pytorch
    import torch
    from make_example import MLP
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    torch.manual_seed(0)
    module = MLP().eval()
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 4))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3))]),
    )
    path = folder / "model"
    # Two rows, as make_example.py: torch.export specializes a dimension of size 1, and a pt2 model
    # saved with a one-row example then serves only one-row requests ("Guard failed: x.size()[0] == 1").
    example = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
    mlflow.pytorch.save_model(
        module, str(path), serialization_format="pt2", signature=signature, input_example=example
    )
    return path, module


def input_specs(model_path: Path) -> list[tuple[str, np.dtype, tuple[int, ...]]]:
    """(name, dtype, trailing shape) of each input, from the MLflow tensor signature."""
    from mlflow.models import Model

    signature = Model.load(str(model_path)).signature
    if signature is None or not signature.inputs.is_tensor_spec():
        raise SystemExit("soak: the model needs a tensor signature (to know what to send).")
    specs = []
    for i, spec in enumerate(signature.inputs.inputs):
        shape = tuple(spec.shape)
        if not shape or shape[0] != -1 or any(d < 0 for d in shape[1:]):
            raise SystemExit(f"soak: input {i} has shape {shape}; expected [-1, fixed dims...].")
        specs.append((spec.name or f"input-{i}", np.dtype(spec.type), shape[1:]))
    return specs


def reference_forward(module: Any, arrays: list[np.ndarray]) -> list[np.ndarray]:
    import torch

    with torch.inference_mode():
        out = module(*(torch.from_numpy(a) for a in arrays))
    values = (
        list(out.values()) if isinstance(out, dict) else list(out) if isinstance(out, tuple | list) else [out]
    )
    return [v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy() for v in values]


def random_input(rng: np.random.Generator, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    if dtype.kind == "f":
        return (rng.standard_normal(shape) * 3).astype(dtype)
    if dtype.kind == "b":
        return rng.random(shape) > 0.5
    return rng.integers(0, 10, shape).astype(dtype)  # small ids: safe for embedding-style inputs


def make_pool(module: Any, specs: list[Any], name: str, size: int, max_rows: int, seed: int) -> list[Item]:
    from mlserver.grpc import dataplane_pb2 as pb

    rng = np.random.default_rng(seed)
    pool = []
    for _ in range(size):
        rows = int(rng.integers(1, max_rows + 1))
        arrays = [random_input(rng, dtype, (rows, *trailing)) for _, dtype, trailing in specs]
        body = {
            "inputs": [
                {"name": n, "datatype": V2[a.dtype], "shape": list(a.shape), "data": a.reshape(-1).tolist()}
                for (n, _, _), a in zip(specs, arrays, strict=True)
            ]
        }
        request = pb.ModelInferRequest(model_name=name, raw_input_contents=[a.tobytes() for a in arrays])
        for (n, _, _), a in zip(specs, arrays, strict=True):
            request.inputs.add(name=n, datatype=V2[a.dtype], shape=list(a.shape))
        pool.append(Item(rows, json.dumps(body).encode(), request, reference_forward(module, arrays)))
    return pool


# --- load -----------------------------------------------------------------------------------------


def compare(item: Item, outputs: list[np.ndarray]) -> str:
    if len(outputs) != len(item.expected):
        return f"{len(outputs)} outputs, expected {len(item.expected)}"
    for got, want in zip(outputs, item.expected, strict=True):
        if got.shape != want.shape:
            return f"shape {got.shape}, expected {want.shape}"
        if not np.allclose(got, want, rtol=RTOL, atol=ATOL, equal_nan=True):
            return f"values differ by up to {float(np.max(np.abs(got - want))):.3g}"
    return ""


async def rest_worker(
    session: Any, url: str, pool: list[Item], end: float, stats: Stats, rng: random.Random
) -> None:
    headers = {"Content-Type": "application/json", "Accept-Encoding": "identity"}
    while time.perf_counter() < end:
        item = pool[rng.randrange(len(pool))]
        start = time.perf_counter()
        try:
            async with session.post(url, data=item.rest_body, headers=headers) as response:
                text = await response.read()
                status = response.status
            done = time.perf_counter()
            if status != 200:
                stats.record(done, done - start, "rest", "error", f"{status} {text[:300]!r}")
                continue
            reply = json.loads(text)
            outputs = [
                np.asarray(o["data"], dtype=e.dtype).reshape(o["shape"])
                for o, e in zip(reply["outputs"], item.expected, strict=False)
            ]
            problem = compare(item, outputs)
            stats.record(done, done - start, "rest", "wrong" if problem else "ok", problem)
        except Exception as err:
            done = time.perf_counter()
            stats.record(done, done - start, "rest", "error", f"{type(err).__name__}: {err}")


async def grpc_worker(stub: Any, pool: list[Item], end: float, stats: Stats, rng: random.Random) -> None:
    while time.perf_counter() < end:
        item = pool[rng.randrange(len(pool))]
        start = time.perf_counter()
        try:
            reply = await stub.ModelInfer(item.grpc_request, timeout=TIMEOUT_S)
            done = time.perf_counter()
            outputs = [
                np.frombuffer(raw, dtype=e.dtype).reshape(list(o.shape))
                for raw, o, e in zip(reply.raw_output_contents, reply.outputs, item.expected, strict=False)
            ]
            problem = compare(item, outputs)
            stats.record(done, done - start, "grpc", "wrong" if problem else "ok", problem)
        except Exception as err:
            done = time.perf_counter()
            stats.record(done, done - start, "grpc", "error", f"{type(err).__name__}: {err}")


def group_rss(pgid: int) -> int:
    """Resident bytes of every process in the server's process group (parallel workers included)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid:  # field 5, pgrp (after the state and ppid)
                continue
            with open(f"/proc/{entry}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            continue
    return total


async def sample_rss(pgid: int, end: float, stats: Stats, every: float) -> None:
    while time.perf_counter() < end:
        stats.rss.append((time.perf_counter(), group_rss(pgid)))
        await asyncio.sleep(every)
    stats.rss.append((time.perf_counter(), group_rss(pgid)))


async def run_load(server: Any, name: str, pool: list[Item], args: argparse.Namespace) -> tuple[Stats, float]:
    import aiohttp
    import grpc
    from mlserver.grpc import dataplane_pb2_grpc as pb_grpc

    stats = Stats()
    start = time.perf_counter()
    end = start + args.minutes * 60
    rest_n = (
        args.concurrency // 2
        if args.transports == "both"
        else (args.concurrency if args.transports == "rest" else 0)
    )
    grpc_n = args.concurrency - rest_n
    options = [
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ]
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session,
        grpc.aio.insecure_channel(server.grpc, options=options) as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        url = f"http://{server.http}/v2/models/{name}/infer"
        tasks = [sample_rss(server.proc.pid, end, stats, args.rss_every)]
        tasks += [rest_worker(session, url, pool, end, stats, random.Random(i)) for i in range(rest_n)]
        tasks += [grpc_worker(stub, pool, end, stats, random.Random(1000 + i)) for i in range(grpc_n)]
        await asyncio.gather(*tasks)
    return stats, start


# --- report ---------------------------------------------------------------------------------------


def summarize(stats: Stats, start: float, args: argparse.Namespace) -> dict[str, Any]:
    duration = args.minutes * 60
    window = args.window or (60.0 if duration >= 180 else duration / 4)
    count = max(int(np.ceil(duration / window - 1e-9)), 2)
    windows = []
    for i in range(count):
        lo, hi = start + i * window, start + (i + 1) * window
        rows = [s for s in stats.samples if lo <= s[0] < hi or (i == count - 1 and s[0] >= hi)]
        latencies = np.array([s[1] for s in rows if s[3] == "ok"]) * 1000
        rss = [r for t, r in stats.rss if lo <= t < hi or (i == count - 1 and t >= hi)]
        windows.append(
            {
                "window": i,
                "from_s": round(i * window, 1),
                "requests": len(rows),
                "per_s": round(len(rows) / window, 1),
                "errors": sum(1 for s in rows if s[3] == "error"),
                "wrong": sum(1 for s in rows if s[3] == "wrong"),
                "p50_ms": round(float(np.percentile(latencies, 50)), 2) if latencies.size else None,
                "p99_ms": round(float(np.percentile(latencies, 99)), 2) if latencies.size else None,
                "rss_mib": round(float(np.median(rss)) / 2**20, 1) if rss else None,
                "warmup": i == 0,
            }
        )
    first, last = windows[1], windows[-1]
    errors = sum(1 for s in stats.samples if s[3] == "error")
    wrong = sum(1 for s in stats.samples if s[3] == "wrong")
    growth = (
        100.0 * (last["rss_mib"] - first["rss_mib"]) / first["rss_mib"]
        if first["rss_mib"] and last["rss_mib"]
        else None
    )
    drift = (
        100.0 * (last["p99_ms"] - first["p99_ms"]) / first["p99_ms"]
        if first["p99_ms"] and last["p99_ms"]
        else None
    )
    goals = {
        "no errors": errors == 0,
        "no wrong answers": wrong == 0,
        f"RSS growth under {args.max_rss_growth}%": growth is not None and growth < args.max_rss_growth,
    }
    return {
        "minutes": args.minutes,
        "concurrency": args.concurrency,
        "transports": args.transports,
        "max_rows": args.max_rows,
        "requests": len(stats.samples),
        "per_transport": {t: sum(1 for s in stats.samples if s[2] == t) for t in ("rest", "grpc")},
        "errors": errors,
        "wrong": wrong,
        "error_examples": stats.error_examples,
        "p99_drift_pct": round(drift, 1) if drift is not None else None,
        "rss_growth_pct": round(growth, 2) if growth is not None else None,
        "rss_peak_mib": round(max((r for _, r in stats.rss), default=0) / 2**20, 1),
        "windows": windows,
        "goals": goals,
        "passed": all(goals.values()),
    }


def print_report(result: dict[str, Any]) -> None:
    print(
        f"soak: {result['minutes']} min, {result['concurrency']} clients ({result['transports']}), "
        f"1..{result['max_rows']} rows, {result['requests']} requests {result['per_transport']}"
    )
    print(
        f"{'window':>6} {'from s':>7} {'req/s':>8} {'errors':>7} {'wrong':>6} {'p50 ms':>8} {'p99 ms':>8} {'RSS MiB':>8}"
    )
    for w in result["windows"]:
        print(
            f"{w['window']:>6} {w['from_s']:>7} {w['per_s']:>8} {w['errors']:>7} {w['wrong']:>6} "
            f"{w['p50_ms']!s:>8} {w['p99_ms']!s:>8} {w['rss_mib']!s:>8}{'  (warm-up)' if w['warmup'] else ''}"
        )
    print(
        f"errors {result['errors']}, wrong {result['wrong']}, p99 drift {result['p99_drift_pct']}% "
        f"(last window vs first after warm-up), RSS growth {result['rss_growth_pct']}% "
        f"(peak {result['rss_peak_mib']} MiB)"
    )
    for example in result["error_examples"]:
        print(f"  {example}")
    for goal, met in result["goals"].items():
        print(f"  {'met   ' if met else 'MISSED'} {goal}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--max-rows", type=int, default=32)
    parser.add_argument("--transports", choices=["both", "rest", "grpc"], default="both")
    parser.add_argument(
        "--model", type=Path, help="an MLflow PyTorch model folder (default: the example MLP)"
    )
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-batch-time", type=float, default=0.005)
    parser.add_argument(
        "--window",
        type=float,
        default=0.0,
        help="seconds per window (default: 60, or a quarter of a run under 3 min)",
    )
    parser.add_argument("--max-rss-growth", type=float, default=5.0, help="percent")
    parser.add_argument("--rss-every", type=float, default=1.0, help="seconds between RSS samples")
    parser.add_argument("--pool", type=int, default=512, help="distinct inputs to draw requests from")
    parser.add_argument("--json", type=Path, help="write the full result here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from tests.server import Server, write_model_settings

    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        folder = Path(tmp)
        if args.model is None:
            model_path, module = build_default_model(folder)
        else:
            import mlflow.pytorch

            model_path = args.model.resolve()
            module = mlflow.pytorch.load_model(
                str(model_path)
            )  # MLflow's own loader: an independent reference
        specs = input_specs(model_path)
        pool = make_pool(module, specs, "soak", args.pool, args.max_rows, seed=7)
        repo = folder / "repo"
        write_model_settings(
            repo / "soak",
            "soak",
            model_path,
            mlserver={"max_batch_size": args.max_batch_size, "max_batch_time": args.max_batch_time},
            # never a 503 by design: every client's largest request fits in the queue at once
            max_queue_rows=args.concurrency * args.max_rows,
        )
        server = Server(repo, grpc_max_message_length=64 * 1024 * 1024).start()
        try:
            server.wait_ready(["soak"])
            stats, start = asyncio.run(run_load(server, "soak", pool, args))
        except (RuntimeError, TimeoutError) as err:
            print(f"soak: the server did not start: {err}", file=sys.stderr)
            return 2
        finally:
            server.stop()
        result = summarize(stats, start, args)
    print_report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
