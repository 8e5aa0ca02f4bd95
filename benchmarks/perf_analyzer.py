"""Triton's perf_analyzer against a server: a second, independent client, so the harness's figures for
ours can be checked against a load generator that is not ours."""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
from pathlib import Path
from typing import Any

from probe import Interface
from servers import WORK, PinnedServer

PA_VENV = WORK / "pa-venv"


def perf_analyzer(
    server: PinnedServer,
    model: str,
    spec: Any,
    iface: Interface,
    args: argparse.Namespace,
    client_cpus: list[list[int]] | None,
) -> dict[str, Any]:
    """Triton's perf_analyzer against one server over HTTP (JSON tensors); its figures, or why there are none."""
    binary = Path(args.perf_analyzer_bin)
    http_json = ["-m", model, "-u", server.http, "-i", "http", "--input-tensor-format", "json"]
    info: dict[str, Any] = {"server": server.dir.name, "binary": str(binary), "runs": []}
    if not binary.exists():
        info["status"] = f"not run: {binary} not found (run benchmarks/setup_perf_analyzer.sh)"
        return info
    status, config = server.get(f"/v2/models/{model}/config")
    info["config_status"] = status
    if status != 200 or not isinstance(config, dict):
        info["status"] = (
            f"not run: GET /v2/models/{model}/config answered HTTP {status} "
            f"({str(config)[:160]!s}); perf_analyzer needs Triton's model config endpoint, "
            "which this server does not provide yet"
        )
        # Show what perf_analyzer itself says, so the reason is not only ours.
        out = _run_pa(
            binary,
            [*http_json, "--concurrency-range", "1:1", "--measurement-interval", "1000"],
            client_cpus,
            60,
        )
        info["perf_analyzer_says"] = out[-1500:]
        return info
    info["config"] = config
    max_batch = int(config.get("max_batch_size") or 0)
    row_dims = ",".join(str(d) for d in spec.row_shape)
    workdir = WORK / "perf_analyzer"
    workdir.mkdir(parents=True, exist_ok=True)
    info["status"] = "ran"
    for rows in args.rows:
        if max_batch > 0:
            if rows > max_batch:
                continue
            shape_args = ["-b", str(rows), "--shape", f"{iface.input_name}:{row_dims}"]
        else:
            shape_args = ["--shape", f"{iface.input_name}:{rows},{row_dims}"]
        for conc in args.concurrency:
            csv_path = workdir / f"{model}-r{rows}-c{conc}.csv"
            csv_path.unlink(missing_ok=True)
            cmd = [
                *http_json,
                "--output-tensor-format",
                "json",
                "--concurrency-range",
                f"{conc}:{conc}",
                "--measurement-interval",
                str(int(args.duration * 1000)),
                "--max-trials",
                "3",
                "--stability-percentage",
                "50",
                "-f",
                str(csv_path),
                *shape_args,
            ]
            out = _run_pa(binary, cmd, client_cpus, int(args.duration * 8 + 60))
            run: dict[str, Any] = {
                "rows": rows,
                "concurrency": conc,
                "command": "perf_analyzer " + " ".join(cmd),
                "output_tail": out[-1200:],
            }
            run.update(_parse_pa_csv(csv_path, rows) if csv_path.exists() else {"error": out[-800:]})
            info["runs"].append(run)
    return info


def _run_pa(binary: Path, cmd: list[str], client_cpus: list[list[int]] | None, timeout: int) -> str:
    cpus = sorted({c for group in client_cpus for c in group}) if client_cpus else None
    try:
        proc = subprocess.run(
            [str(binary), *cmd],
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )
        return f"(exit {proc.returncode})\n{proc.stdout}{proc.stderr}"
    except subprocess.TimeoutExpired as err:
        said = [
            x.decode(errors="replace") if isinstance(x, bytes) else (x or "")
            for x in (err.stdout, err.stderr)
        ]
        return f"(timed out after {timeout}s)\n{said[0]}{said[1]}"


def _parse_pa_csv(path: Path, rows: int) -> dict[str, Any]:
    with path.open() as f:
        lines = list(csv.DictReader(f))
    if not lines:
        return {"error": f"{path} is empty"}
    row = lines[0]

    def us(key: str) -> float:
        return float(row.get(key) or "nan") / 1000.0

    ips = float(row.get("Inferences/Second") or "nan")  # inferences = rows when -b is used
    return {
        "infer_per_s": ips,
        "p50_ms": us("p50 latency"),
        "p90_ms": us("p90 latency"),
        "p99_ms": us("p99 latency"),
        "mean_ms": us("Avg latency"),
    }
