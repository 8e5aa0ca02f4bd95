"""Side-by-side benchmark: TorchFlowRuntime ("ours") against mlserver-mlflow ("the peer") and an
answer-at-once runtime ("the floor"), all on MLServer 1.7.1, driven by the same load generator.

    python benchmarks/run.py [--quick] [--duration S] [--concurrency 1,8,32,64] [--protocols rest,grpc]
                             [--rows 1,8] [--models mlp,conv] [--out benchmarks/results] [--perf-analyzer]

Servers run one at a time (the cores are shared), each on free loopback ports with debug: false and
parallel_workers: 0, pinned to the server cores; the client runs in its own process(es) pinned to the other
core(s). See benchmarks/README.md for what is measured and how to read the ratios.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import multiprocessing as mp
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = HERE / ".work"
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from loadgen import Job, run_job, triton_dtype  # noqa: E402


def _import_server() -> Any:
    """tests/server.py by file path: `tests` has no __init__.py, and a site-packages `tests` would win."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("torchflow_test_server", REPO / "tests" / "server.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.Server


if TYPE_CHECKING:
    from tests.server import Server
else:
    Server = _import_server()

PROJECT_MLSERVER = str(Path(sys.executable).with_name("mlserver"))
# BENCH_PEER_VENV: a peer venv built elsewhere (e.g. by another checkout's setup_peer.sh)
PEER_VENV = Path(os.environ.get("BENCH_PEER_VENV") or WORK / "peer-venv")
PA_VENV = WORK / "pa-venv"
POOL = 4  # distinct inputs per worker
TOLERANCE = 1e-4
PROBE_SEED = 999  # the input of the probe requests


def pool_seed(worker: int, k: int) -> int:
    """The seed of worker `worker`'s k-th input: every input a load sends is known in advance."""
    return 100_000 + 1_000 * worker + k


# ------------------------------------------------------------------------------------------------ configs


@dataclass(frozen=True)
class ServerConfig:
    key: str  # e.g. "ours-batched"
    group: str  # "ours" | "peer" | "floor"
    implementation: str
    batching: tuple[int, float] | None  # (max_batch_size, max_batch_time)

    def label(self) -> str:
        if self.batching is None:
            return f"{self.key} (no batching)"
        return f"{self.key} (max_batch_size {self.batching[0]}, max_batch_time {self.batching[1]})"


def server_configs(args: argparse.Namespace) -> list[ServerConfig]:
    ours_batch = parse_batch(args.ours_batch)
    peer_batch = parse_batch(args.peer_batch)
    configs = []
    if "floor" in args.servers:
        configs.append(ServerConfig("floor", "floor", "floor.FloorRuntime", None))
    if "ours" in args.servers:
        for variant in args.ours:
            configs.append(
                ServerConfig(
                    f"ours-{variant}",
                    "ours",
                    "mlserver_torchflow.TorchFlowRuntime",
                    ours_batch if variant == "batched" else None,
                )
            )
    if "peer" in args.servers:
        for variant in args.peer:
            configs.append(
                ServerConfig(
                    f"peer-{variant}",
                    "peer",
                    "mlserver_mlflow.MLflowRuntime",
                    peer_batch if variant == "batched" else None,
                )
            )
    return configs


def parse_batch(text: str) -> tuple[int, float]:
    size, wait = text.split(",")
    return int(size), float(wait)


# ------------------------------------------------------------------------------------------------ machine


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown-cpu"


def machine_tag() -> str:
    model = re.sub(r"\((R|TM|tm|r)\)|CPU|Processor|\d+-Core|@.*$", "", cpu_model())
    model = re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")[:40] or "cpu"
    return f"{platform.machine()}-{len(os.sched_getaffinity(0))}cpu-{model}"


def split_cpus(args: argparse.Namespace) -> tuple[list[int] | None, list[list[int]] | None]:
    """(server cores, one core list per client process); (None, None) when not pinning."""
    cpus = sorted(os.sched_getaffinity(0))
    if args.no_pin or len(cpus) < 2:
        return None, None
    if args.server_cpus:
        server = [int(c) for c in args.server_cpus.split(",")]
        client = [c for c in cpus if c not in server] or cpus
    else:
        n_client = min(max(args.client_procs, 1), len(cpus) - 1)
        client, server = cpus[-n_client:], cpus[:-n_client]
    per_proc = [[client[i % len(client)]] for i in range(args.client_procs)]
    return server, per_proc


# ------------------------------------------------------------------------------------------------ servers


class PinnedServer(Server):
    """tests.server.Server, started with a given `mlserver` executable and pinned to `cpus`."""

    def __init__(
        self,
        models_dir: Path,
        mlserver: str,
        cpus: list[int] | None,
        env: dict[str, str],
        prefix: tuple[str, ...] = (),
        **settings: Any,
    ) -> None:
        super().__init__(models_dir, **settings)
        self.mlserver = mlserver
        self.prefix = prefix  # e.g. (python, -m, cProfile, -o, FILE): run `mlserver` under a profiler
        self.cpus = cpus
        # No MLSERVER_* from the caller's shell: every server gets exactly the settings written here.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MLSERVER")}
        self.env.pop("PYTHONPATH", None)
        self.env.update(env)

    def start(self) -> PinnedServer:
        log = self.log_path.open("wb")
        cpus = self.cpus

        def pin() -> None:
            if cpus:
                os.sched_setaffinity(0, cpus)

        self.proc = subprocess.Popen(
            [*self.prefix, self.mlserver, "start", str(self.dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
            preexec_fn=pin,
        )
        return self

    def cpu_seconds(self) -> float:
        """user+system CPU seconds of every process in the server's session (all threads)."""
        if self.proc is None:
            return 0.0
        total, tick = 0, os.sysconf("SC_CLK_TCK")
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == self.proc.pid:  # fields[3] is the process group (the session leader's pid)
                total += int(fields[11]) + int(fields[12])
        return total / tick


def start_server(
    cfg: ServerConfig,
    model: str,
    model_path: Path,
    server_cpus: list[int] | None,
    row_shape: tuple[int, ...],
    extra: dict[str, Any] | None = None,
    prefix: tuple[str, ...] = (),
    **server_settings: Any,
) -> PinnedServer:
    """`extra`: our runtime's settings (default: device cpu); `server_settings`: settings.json fields."""
    folder = WORK / "servers" / f"{model}-{cfg.key}"
    shutil.rmtree(folder, ignore_errors=True)
    (folder / model).mkdir(parents=True)
    settings: dict[str, Any] = {"name": model, "implementation": cfg.implementation}
    if cfg.group != "floor":
        settings["parameters"] = {"uri": str(model_path)}
    if cfg.group == "ours":
        settings["parameters"]["extra"] = extra if extra is not None else {"device": "cpu"}
    if cfg.group == "floor":  # metadata only (the floor never reads it): names for its config endpoint
        settings["inputs"] = [{"name": "input-0", "datatype": "FP32", "shape": [-1, *row_shape]}]
        settings["outputs"] = [{"name": "output-0", "datatype": "FP32", "shape": [-1, 10]}]
    if cfg.batching is not None:
        settings["max_batch_size"], settings["max_batch_time"] = cfg.batching
    (folder / model / "model-settings.json").write_text(json.dumps(settings, indent=2))

    env: dict[str, str] = {}
    if server_cpus:  # the same thread count for every server: one per server core
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(len(server_cpus))
    if cfg.group == "floor":
        env["PYTHONPATH"] = str(HERE)
    if cfg.group == "ours" and os.environ.get("BENCH_OURS_SRC"):
        # benchmark the runtime from another checkout (e.g. a clean worktree of a commit)
        env["PYTHONPATH"] = os.environ["BENCH_OURS_SRC"]
    mlserver = str(PEER_VENV / "bin" / "mlserver") if cfg.group == "peer" else PROJECT_MLSERVER
    if not Path(mlserver).exists():
        hint = " (run benchmarks/setup_peer.sh)" if cfg.group == "peer" else ""
        raise RuntimeError(f"{mlserver} not found{hint}")
    server = PinnedServer(folder, mlserver, server_cpus, env, prefix, **server_settings).start()
    try:
        server.wait_ready([model], timeout=300)
    except Exception:
        server.stop()
        raise
    return server


# ------------------------------------------------------------------------------------------------ probing


@dataclass
class Interface:
    """What a server calls its tensors, learnt from its metadata and from one real reply per protocol."""

    input_name: str
    metadata_inputs: list[dict[str, Any]]
    metadata_outputs: list[dict[str, Any]]
    reply_outputs: dict[str, list[str]] = field(default_factory=dict)  # protocol -> output names in a reply
    notes: list[str] = field(default_factory=list)


def probe(
    server: PinnedServer,
    cfg: ServerConfig,
    model: str,
    spec: Any,
    reference: Any,
    protocols: list[str],
    rows_list: list[int],
    tolerance: float = TOLERANCE,
) -> Interface:
    status, meta = server.get(f"/v2/models/{model}")
    if status != 200 or not isinstance(meta, dict):
        raise RuntimeError(f"GET /v2/models/{model} answered {status}: {str(meta)[:300]}")
    inputs = meta.get("inputs") or []
    outputs = meta.get("outputs") or []
    input_name = inputs[0]["name"] if inputs else "input-0"
    iface = Interface(input_name, inputs, outputs)
    if not inputs:
        iface.notes.append("metadata lists no inputs; sending 'input-0'")

    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from loadgen import patch_tritonclient_http

    patch_tritonclient_http()  # the same plain V2 body as the load generator

    for protocol in protocols:
        for rows in rows_list:
            array = spec.inputs(rows, seed=PROBE_SEED)
            names, out = _one_request(server, protocol, model, input_name, array, httpclient, grpcclient)
            iface.reply_outputs.setdefault(protocol, names)
            if len(names) != 1:
                raise RuntimeError(f"{protocol}, {rows} rows: expected one output in the reply, got {names}")
            if cfg.group != "floor":
                expected = reference(array)
                if out.shape != expected.shape or not np.allclose(
                    out, expected, rtol=tolerance, atol=tolerance
                ):
                    raise RuntimeError(f"{protocol}, {rows} rows: the probe reply does not match the forward")
            elif out.shape != (rows, 10):
                raise RuntimeError(f"{protocol}, {rows} rows: floor reply has shape {out.shape}")
    if cfg.group != "floor":
        # What else a client could send: a 1-row input without its batch dimension, and another input name.
        one = spec.inputs(1, seed=998)
        for what, name, array in (
            ("1-D input (no batch dimension)", input_name, one[0]),
            ("input named 'x' instead of the metadata's name", "x", one),
        ):
            body = {
                "inputs": [
                    {
                        "name": name,
                        "shape": list(array.shape),
                        "datatype": triton_dtype(array),
                        "data": array.ravel().tolist(),
                    }
                ]
            }
            status, reply = server.post(f"/v2/models/{model}/infer", body)
            if status == 200 and isinstance(reply, dict):
                shapes = [o.get("shape") for o in reply.get("outputs", [])]
                iface.notes.append(f"{what}: accepted (REST), reply shape(s) {shapes}")
            else:
                text = reply.get("error", reply) if isinstance(reply, dict) else reply
                iface.notes.append(f"{what}: refused (REST): HTTP {status}, {str(text).strip()[:200]!r}")
    return iface


def _one_request(
    server: PinnedServer,
    protocol: str,
    model: str,
    input_name: str,
    array: np.ndarray,
    httpclient: Any,
    grpcclient: Any,
) -> tuple[list[str], np.ndarray]:
    if protocol == "rest":
        client = httpclient.InferenceServerClient(server.http)
        inp = httpclient.InferInput(input_name, list(array.shape), triton_dtype(array))
        inp.set_data_from_numpy(array, binary_data=False)
        result = client.infer(model, [inp], headers={"Content-Type": "application/json"})
        names = [o["name"] for o in result.get_response()["outputs"]]
    else:
        client = grpcclient.InferenceServerClient(server.grpc)
        inp = grpcclient.InferInput(input_name, list(array.shape), triton_dtype(array))
        inp.set_data_from_numpy(array)
        result = client.infer(model, [inp], client_timeout=60)
        names = [o.name for o in result.get_response().outputs]
    client.close()
    return names, result.as_numpy(names[0])


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:200]


# ------------------------------------------------------------------------------------------------ one point


@dataclass
class Point:
    model: str
    server: str  # ServerConfig.key
    group: str
    protocol: str
    rows: int
    concurrency: int
    duration: float = 0.0
    ok: int = 0
    errors: int = 0
    wrong: int = 0
    rps: float = float("nan")
    rows_per_s: float = float("nan")
    p50_ms: float = float("nan")
    p90_ms: float = float("nan")
    p99_ms: float = float("nan")
    mean_ms: float = float("nan")
    client_cpu: float = float("nan")  # cores the client process(es) used, summed
    server_cpu: float = float("nan")  # cores the server used
    client_us_per_req: float = float("nan")  # client CPU per reply: 1e6 / this = one client core's ceiling
    req_per_server_cpu_s: float = float("nan")  # good replies per second of server CPU: efficiency
    samples: list[str] = field(default_factory=list)
    failed: str = ""


def measure(
    point: Point,
    server: PinnedServer,
    iface: Interface,
    spec: Any,
    reference: Any | None,
    args: argparse.Namespace,
    client_cpus: list[list[int]] | None,
    tolerance: float = TOLERANCE,
    on_window: Callable[[str], None] | None = None,
) -> Point:
    """One closed-loop point. `on_window("start")` / `("end")` run at the window's edges (e.g. to read
    the server's metrics); replies are checked against `reference`, whose shapes they must have."""
    ctx = mp.get_context("spawn")
    procs_n = max(1, min(args.client_procs, point.concurrency))
    shares = [list(range(point.concurrency))[i::procs_n] for i in range(procs_n)]
    output_name = iface.reply_outputs[point.protocol][0]
    url = server.http if point.protocol == "rest" else server.grpc
    queue, ready, go = ctx.Queue(), ctx.Semaphore(0), ctx.Event()
    window = ctx.Array("d", 2)
    procs = []
    for i, share in enumerate(shares):
        inputs = [[spec.inputs(point.rows, seed=pool_seed(w, k)) for k in range(POOL)] for w in share]
        expected = [[reference(a) for a in pool] for pool in inputs] if reference is not None else None
        job = Job(
            protocol=point.protocol,
            url=url,
            model=point.model,
            input_name=iface.input_name,
            output_name=output_name,
            workers=len(share),
            inputs=inputs,
            expected=expected,
            out_shape=[e.shape for e in expected[0]] if expected else [(point.rows, 10)] * POOL,
            tolerance=tolerance,
            cpus=client_cpus[i] if client_cpus else None,
            mode=args.client_mode,
        )
        proc = ctx.Process(target=run_job, args=(job, queue, ready, go, window), daemon=True)
        proc.start()
        procs.append(proc)
    for _ in procs:
        if not ready.acquire(timeout=120):
            point.failed = "a client process did not start within 120 s"
            break
    t_start = time.perf_counter() + args.warmup
    window[0], window[1] = t_start, t_start + args.duration
    go.set()
    time.sleep(max(t_start - time.perf_counter(), 0))
    if on_window:
        on_window("start")
    cpu0, wall0 = server.cpu_seconds(), time.perf_counter()
    time.sleep(max(window[1] - time.perf_counter(), 0))
    point.server_cpu = (server.cpu_seconds() - cpu0) / (time.perf_counter() - wall0)
    if on_window:
        on_window("end")
    point.duration = args.duration

    results: list[dict[str, Any]] = []
    deadline = time.monotonic() + 120
    while len(results) < len(procs) and time.monotonic() < deadline:
        try:
            results.append(queue.get(timeout=max(deadline - time.monotonic(), 0.1)))
        except Exception:
            break
    for proc in procs:
        proc.join(timeout=5)
        if proc.is_alive():
            proc.kill()
    if len(results) < len(procs):
        point.failed = point.failed or "a client process gave no result (hung requests?)"
    crashes = [r["crash"] for r in results if "crash" in r]
    if crashes:
        point.failed = "client crashed: " + crashes[0][:1500]
    good = [r for r in results if "crash" not in r]
    latencies = np.concatenate([r["latencies"] for r in good]) if good else np.empty(0)
    point.ok = int(sum(r["ok"] for r in good))
    point.errors = int(sum(r["errors"] for r in good))
    point.wrong = int(sum(r["wrong"] for r in good))
    point.samples = [s for r in good for s in r["samples"]][:5]
    point.client_cpu = float(sum(r["client_cpu"] for r in good)) if good else float("nan")
    point.rps = point.ok / args.duration
    replies = point.ok + point.errors + point.wrong
    if point.server_cpu > 0:
        point.req_per_server_cpu_s = point.rps / point.server_cpu
    if replies:
        point.client_us_per_req = point.client_cpu * args.duration / replies * 1e6
    point.rows_per_s = point.rps * point.rows
    if latencies.size:
        ms = latencies * 1e3
        point.p50_ms, point.p90_ms, point.p99_ms = (float(v) for v in np.percentile(ms, [50, 90, 99]))
        point.mean_ms = float(ms.mean())
    if server.proc is not None and server.proc.poll() is not None:
        point.failed = point.failed or f"the server exited with {server.proc.returncode}"
    return point


# ------------------------------------------------------------------------------------------------ references


def load_reference(model_path: Path) -> Any:
    """The saved model itself (not a rebuilt copy), for the in-process forward every reply is checked with."""
    import torch

    module = torch.load(model_path / "data" / "model.pth", weights_only=False, map_location="cpu").eval()
    torch.set_num_threads(1)

    def forward(array: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(array)).numpy()

    return forward


# ------------------------------------------------------------------------------------------------ perf_analyzer


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
            [
                "-m",
                model,
                "-u",
                server.http,
                "-i",
                "http",
                "--input-tensor-format",
                "json",
                "--concurrency-range",
                "1:1",
                "--measurement-interval",
                "1000",
            ],
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
                "-m",
                model,
                "-u",
                server.http,
                "-i",
                "http",
                "--input-tensor-format",
                "json",
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


# ------------------------------------------------------------------------------------------------ report


def fmt(v: float, digits: int = 0) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:,.{digits}f}"


def ratio(a: float, b: float) -> str:
    if any(x is None or (isinstance(x, float) and math.isnan(x)) for x in (a, b)) or b == 0:
        return "–"
    return f"{a / b:.2f}×"


def best_of(points: list[Point]) -> Point | None:
    usable = [p for p in points if p.ok > 0]
    return max(usable, key=lambda p: p.rps) if usable else None


def summary_rows(points: list[Point], args: argparse.Namespace) -> list[dict[str, Any]]:
    keyed: dict[tuple[str, str, int, int], list[Point]] = {}
    for p in points:
        keyed.setdefault((p.model, p.protocol, p.rows, p.concurrency), []).append(p)
    rows = []
    for (model, protocol, nrows, conc), group in keyed.items():
        ours = next((p for v in args.ours for p in group if p.server == f"ours-{v}" and p.ok > 0), None)
        peer = best_of([p for p in group if p.group == "peer"])
        floor = next((p for p in group if p.group == "floor"), None)
        bad = sum(p.errors + p.wrong for p in group) + sum(1 for p in group if p.failed)
        rows.append(
            {
                "model": model,
                "protocol": protocol,
                "rows": nrows,
                "concurrency": conc,
                "ours": ours,
                "peer": peer,
                "floor": floor,
                "problems": bad,
            }
        )
    return rows


def markdown(
    points: list[Point],
    ifaces: dict[str, dict[str, Any]],
    pa: list[dict[str, Any]],
    args: argparse.Namespace,
    tag: str,
    started: str,
    configs: list[ServerConfig],
    server_logs: dict[str, dict[str, Any]],
) -> str:
    out = [f"# Benchmark: {tag}", ""]
    out.append(
        f"Run {started}; {len(os.sched_getaffinity(0))} CPUs ({cpu_model()}); "
        f"{args.duration:g} s per point after {args.warmup:g} s warm-up; client: {args.client_mode}, "
        f"{args.client_procs} process(es); server cores {args.server_cpus_used}, client cores "
        f"{args.client_cpus_used}. Servers: " + "; ".join(c.label() for c in configs) + "."
    )
    if args.quick:
        out.append("")
        out.append("**Quick trial**: short points on a shared machine; the figures are indicative only.")
    out += [
        "",
        "## Summary",
        "",
        "Throughput in requests/s (rows/s = requests/s × rows); latency p50 / p99 in ms. "
        "`peer-best` is whichever peer configuration had the higher throughput at that point (named in "
        "`peer cfg`). Ratios are throughput ratios (>1: ours is faster) except `p99 ours/peer` (<1: ours "
        "has the lower tail).",
        "",
    ]
    out.append(
        "| model | proto | rows | conc | ours req/s | ours rows/s | ours p50 / p99 | peer-best req/s "
        "| peer p50 / p99 | peer cfg | floor req/s | floor p50 / p99 | ours/peer | ours/floor "
        "| p99 ours/peer | problems |"
    )
    out.append("|" + "---|" * 16)
    for r in summary_rows(points, args):
        o, p, f = r["ours"], r["peer"], r["floor"]

        def tp(x: Point | None) -> str:
            return fmt(x.rps) if x else "–"

        def lat(x: Point | None) -> str:
            return f"{fmt(x.p50_ms, 1)} / {fmt(x.p99_ms, 1)}" if x else "–"

        out.append(
            f"| {r['model']} | {r['protocol']} | {r['rows']} | {r['concurrency']} | {tp(o)} "
            f"| {fmt(o.rows_per_s) if o else '–'} | {lat(o)} | {tp(p)} | {lat(p)} "
            f"| {p.server.removeprefix('peer-') if p else '–'} | {tp(f)} | {lat(f)} "
            f"| {ratio(o.rps, p.rps) if o and p else '–'} | {ratio(o.rps, f.rps) if o and f else '–'} "
            f"| {ratio(o.p99_ms, p.p99_ms) if o and p else '–'} | {r['problems'] or ''} |"
        )
    if "ours" in args.servers:
        out += ["", f"`ours` is `ours-{args.ours[0]}` (the first of --ours) where it has results."]

    out += [
        "",
        "## Every configuration",
        "",
        "`client cpu` / `server cpu`: cores busy during the measurement window (1.00 = one full core). "
        "A client near 1.00 per client process means the client, not the server, may be the limit at that "
        "point; the server near its core count means the server is saturated. `client µs/req`: client CPU "
        "per reply (1,000,000 / it = the most req/s one client core could drive). `req/server cpu-s`: good "
        "replies per second of server CPU, an efficiency figure that a busy machine distorts less than req/s.",
        "",
    ]
    out.append(
        "| model | server | proto | rows | conc | req/s | rows/s | p50 ms | p90 ms | p99 ms | ok | errors "
        "| wrong | client cpu | client µs/req | server cpu | req/server cpu-s | note |"
    )
    out.append("|" + "---|" * 18)
    for p in points:
        note = p.failed or "; ".join(p.samples)
        note = note.replace("|", "\\|").replace("\n", " ")[:200]
        out.append(
            f"| {p.model} | {p.server} | {p.protocol} | {p.rows} | {p.concurrency} | {fmt(p.rps)} "
            f"| {fmt(p.rows_per_s)} | {fmt(p.p50_ms, 2)} | {fmt(p.p90_ms, 2)} | {fmt(p.p99_ms, 2)} | {p.ok} "
            f"| {p.errors} | {p.wrong} | {fmt(p.client_cpu, 2)} | {fmt(p.client_us_per_req)} "
            f"| {fmt(p.server_cpu, 2)} | {fmt(p.req_per_server_cpu_s)} | {note} |"
        )

    out += [
        "",
        "## Interfaces seen",
        "",
        "Input name from `GET /v2/models/<name>` (first input); output names as listed in metadata and as "
        "found in real replies.",
        "",
    ]
    for key, info in ifaces.items():
        if "error" in info:
            out.append(f"- **{key}**: could not be probed: {info['error']}")
            continue
        meta_in = ", ".join(
            f"{t['name']} {t.get('datatype')} {t.get('shape')}" for t in info["metadata_inputs"]
        )
        meta_out = ", ".join(
            f"{t['name']} {t.get('datatype')} {t.get('shape')}" for t in info["metadata_outputs"]
        )
        replies = "; ".join(f"{proto}: {names}" for proto, names in info["reply_outputs"].items())
        out.append(
            f"- **{key}**: metadata inputs [{meta_in}], outputs [{meta_out}]; reply outputs {replies}."
        )
        for note in info["notes"]:
            out.append(f"  - {note}")

    if server_logs:
        out += [
            "",
            "## Server logs",
            "",
            "Counted from the end of the probe requests (which send a few malformed "
            "requests on purpose) to the server's stop.",
            "",
        ]
        for key, log in server_logs.items():
            for death in log.get("deaths", []):
                out.append(
                    f"- **{key}**: **the server exited (code {death['exit_code']}) under load**, found "
                    f"before the point {death['before_point']}; restarted. Log: `{death['log']}`; last "
                    "lines: `" + " ⏎ ".join(death["log_tail"][-6:])[:600].replace("`", "'") + "`"
                )
            out.append(
                f"- **{key}**: {log['errors']} ERROR/Traceback line(s)"
                + (f"; first: `{log['first'][:300]}`" if log["first"] else "")
                + f"; {log['warnings']} WARNING line(s)"
                + (f"; first: `{log['first_warning'][:300]}`" if log["first_warning"] else "")
                + f" (log: `{log['path']}`)"
            )

    if args.perf_analyzer:
        out += ["", "## perf_analyzer (Triton), HTTP, JSON tensors", ""]
        if not pa:
            out.append("Not run (no server of the target group ran).")
        for info in pa:
            out.append(f"**{info['server']}**: {info.get('status')}")
            if info.get("perf_analyzer_says"):
                said = info["perf_analyzer_says"].strip().splitlines()
                out.append("")
                out.append("perf_analyzer said:")
                out.append("```")
                out += said[:15]
                out.append("```")
            if info.get("runs"):
                out += [
                    "",
                    "| rows | conc | infer/s | p50 ms | p90 ms | p99 ms | harness req/s at the point "
                    "| note |",
                    "|---|---|---|---|---|---|---|---|",
                ]
                for run in info["runs"]:
                    ours = next(
                        (
                            p
                            for p in points
                            if p.server == info["server_config"]
                            and p.model == info["model"]
                            and p.protocol == "rest"
                            and p.rows == run["rows"]
                            and p.concurrency == run["concurrency"]
                        ),
                        None,
                    )
                    out.append(
                        f"| {run['rows']} | {run['concurrency']} | {fmt(run.get('infer_per_s', float('nan')))} "
                        f"| {fmt(run.get('p50_ms', float('nan')), 2)} | {fmt(run.get('p90_ms', float('nan')), 2)} "
                        f"| {fmt(run.get('p99_ms', float('nan')), 2)} | {fmt(ours.rps) if ours else '–'} "
                        f"| {str(run.get('error', '')).strip().splitlines()[-1:] if run.get('error') else ''} |"
                    )
            out.append("")
    return "\n".join(out) + "\n"


def plot(points: list[Point], args: argparse.Namespace, tag: str, path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed in this venv (pip install matplotlib): no plot"
    models = [m for m in args.models if any(p.model == m for p in points)]
    panels = [(proto, rows) for proto in args.protocols for rows in args.rows]
    if not models or not panels:
        return "nothing to plot"
    fig, axes = plt.subplots(
        2 * len(models), len(panels), figsize=(4.2 * len(panels), 3.4 * 2 * len(models)), squeeze=False
    )
    servers = list(dict.fromkeys(p.server for p in points))
    styles = {"ours": "-", "peer": "--", "floor": ":"}
    colors = {s: f"C{i}" for i, s in enumerate(servers)}  # the same colour for a server in every panel
    for mi, model in enumerate(models):
        for ci, (proto, rows) in enumerate(panels):
            top, bottom = axes[2 * mi][ci], axes[2 * mi + 1][ci]
            for server in servers:
                series = sorted(
                    (
                        p
                        for p in points
                        if p.model == model
                        and p.server == server
                        and p.protocol == proto
                        and p.rows == rows
                        and p.ok > 0
                    ),
                    key=lambda p: p.concurrency,
                )
                if not series:
                    continue
                conc = [p.concurrency for p in series]
                group = series[0].group
                style = {"linestyle": styles[group], "marker": "o", "color": colors[server], "label": server}
                top.plot(conc, [p.rps for p in series], **style)
                bottom.plot(conc, [p.p99_ms for p in series], **style)
            top.set_title(f"{model} · {proto} · {rows} row{'s' if rows > 1 else ''}")
            for ax in (top, bottom):
                ax.set_xscale("log", base=2)
                ax.set_xticks(args.concurrency, [str(c) for c in args.concurrency])
                ax.grid(True, alpha=0.3)
            top.set_ylabel("throughput (req/s)")
            bottom.set_ylabel("p99 latency (ms)")
            bottom.set_xlabel("concurrency")
            bottom.set_yscale("log")
            top.set_ylim(bottom=0)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{tag}{' (quick trial, indicative only)' if args.quick else ''}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def record_death(server: PinnedServer, since: int, before: str) -> dict[str, Any]:
    """A server that exited under load: its exit code and log tail, the log kept beside the new one."""
    text = server.log()
    kept = server.log_path.with_name(f"server.died-{time.strftime('%H%M%S')}.log")
    kept.write_text(text)
    # start_server() wipes the folder; keep the dead server's log one level up.
    safe = server.dir.parent / f"{server.dir.name}.{kept.name}"
    shutil.copy(kept, safe)
    tail = [ln for ln in text[since:].splitlines() if ln.strip()][-25:]
    code = server.proc.returncode if server.proc is not None else None
    return {"before_point": before, "exit_code": code, "log": str(safe), "log_tail": tail}


def no_nan(value: Any) -> Any:
    """NaN (no measurement) as JSON null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: no_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [no_nan(v) for v in value]
    return value


def scan_log(server: PinnedServer, since: int) -> dict[str, Any]:
    """ERROR / Traceback / WARNING lines the server logged under load (after the probe requests)."""
    lines = server.log()[since:].splitlines()
    errors = [ln for ln in lines if "ERROR" in ln or ln.startswith("Traceback")]
    warnings = [ln for ln in lines if "WARNING" in ln]
    return {
        "errors": len(errors),
        "first": errors[0] if errors else "",
        "warnings": len(warnings),
        "first_warning": warnings[0] if warnings else "",
        "path": str(server.log_path),
    }


# ------------------------------------------------------------------------------------------------ main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a short trial: 3 s per point, concurrency 1,8, mlp, 1 row (flags given win)",
    )
    parser.add_argument("--duration", type=float, help="seconds measured per point (default 15; quick 3)")
    parser.add_argument(
        "--warmup", type=float, help="seconds of load before each window (default 3; quick 1)"
    )
    parser.add_argument("--concurrency", help="default 1,8,32,64 (quick 1,8)")
    parser.add_argument("--protocols", default="rest,grpc")
    parser.add_argument("--rows", help="rows per request (default 1,8; quick 1)")
    parser.add_argument("--models", help="default mlp,conv (quick mlp)")
    parser.add_argument("--servers", default="floor,ours,peer", help="which groups to run")
    parser.add_argument(
        "--ours",
        default="batched,unbatched",
        help="our configurations, in order; the first one is 'ours' in the summary",
    )
    parser.add_argument("--peer", default="unbatched,batched", help="the peer's configurations")
    parser.add_argument(
        "--ours-batch", default="64,0.005", help="max_batch_size,max_batch_time for ours-batched"
    )
    parser.add_argument(
        "--peer-batch", default="32,0.005", help="max_batch_size,max_batch_time for peer-batched"
    )
    parser.add_argument("--client-mode", choices=("asyncio", "threads"), default="asyncio")
    parser.add_argument("--client-procs", type=int, default=1, help="client processes, one core each")
    parser.add_argument("--server-cpus", help="cores for the server, e.g. 0 (default: all but the client's)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and client to cores")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--tag", help="file name stem (default: arch-<N>cpu-<cpu model>)")
    parser.add_argument(
        "--perf-analyzer", action="store_true", help="also run Triton's perf_analyzer against ours over HTTP"
    )
    parser.add_argument("--perf-analyzer-bin", default=str(PA_VENV / "bin" / "pa"))
    parser.add_argument(
        "--perf-analyzer-on",
        default="ours",
        help="which group(s) perf_analyzer targets (ours; floor,peer also possible)",
    )
    args = parser.parse_args()
    q = args.quick
    args.duration = args.duration or (3.0 if q else 15.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if q else 3.0)
    args.concurrency = [int(c) for c in (args.concurrency or ("1,8" if q else "1,8,32,64")).split(",")]
    args.rows = [int(r) for r in (args.rows or ("1" if q else "1,8")).split(",")]
    args.models = (args.models or ("mlp" if q else "mlp,conv")).split(",")
    args.protocols = args.protocols.split(",")
    args.servers = args.servers.split(",")
    args.ours = [v for v in args.ours.split(",") if v]
    args.peer = [v for v in args.peer.split(",") if v]
    args.perf_analyzer_on = args.perf_analyzer_on.split(",")
    for v in args.ours + args.peer:
        if v not in ("batched", "unbatched"):
            parser.error(f"configurations are 'batched' and 'unbatched', got {v!r}")
    return args


def main() -> int:
    args = parse_args()
    import models as model_defs

    tag = args.tag or (machine_tag() + ("-quick" if args.quick else ""))
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    server_cpus, client_cpus = split_cpus(args)
    args.server_cpus_used = server_cpus or "all"
    args.client_cpus_used = client_cpus or "all"
    configs = server_configs(args)
    args.out.mkdir(parents=True, exist_ok=True)
    print(
        f"[bench] {tag}: servers {[c.key for c in configs]}, models {args.models}, protocols {args.protocols}, "
        f"rows {args.rows}, concurrency {args.concurrency}, {args.duration:g}s/point; server cores "
        f"{args.server_cpus_used}, client cores {args.client_cpus_used}",
        flush=True,
    )

    points: list[Point] = []
    ifaces: dict[str, dict[str, Any]] = {}
    pa_results: list[dict[str, Any]] = []
    logs: dict[str, dict[str, Any]] = {}
    deaths: dict[str, list[dict[str, Any]]] = {}
    for model in args.models:
        spec = model_defs.SPECS[model]
        model_path = model_defs.save(spec)
        reference = load_reference(model_path)
        for cfg in configs:
            key = f"{model}/{cfg.key}"
            print(f"[bench] starting {key}", flush=True)
            try:
                server = start_server(cfg, model, model_path, server_cpus, spec.row_shape)
            except Exception as err:
                ifaces[key] = {"error": f"did not start: {_first_line(err)}"}
                print(f"[bench] {key} did not start: {err}", flush=True)
                for proto in args.protocols:
                    for rows in args.rows:
                        for conc in args.concurrency:
                            points.append(
                                Point(
                                    model,
                                    cfg.key,
                                    cfg.group,
                                    proto,
                                    rows,
                                    conc,
                                    failed=f"server did not start: {_first_line(err)}",
                                )
                            )
                continue
            mark = 0
            try:
                try:
                    iface = probe(server, cfg, model, spec, reference, args.protocols, args.rows)
                    ifaces[key] = asdict(iface)
                except Exception as err:
                    ifaces[key] = {"error": f"probe failed: {_first_line(err)}"}
                    print(f"[bench] {key} probe failed: {err}", flush=True)
                    iface = None
                mark = len(server.log())
                for proto in args.protocols:
                    for rows in args.rows:
                        for conc in args.concurrency:
                            point = Point(model, cfg.key, cfg.group, proto, rows, conc)
                            if (
                                iface is not None
                                and server.proc is not None
                                and server.proc.poll() is not None
                            ):
                                # It died during the previous point: keep its log, start it again, go on.
                                death = record_death(server, mark, f"{proto} rows={rows} conc={conc}")
                                deaths.setdefault(key, []).append(death)
                                print(
                                    f"[bench] {key} had exited ({death['exit_code']}); restarting. Its last "
                                    f"log lines:\n    " + "\n    ".join(death["log_tail"][-8:]),
                                    flush=True,
                                )
                                try:
                                    server = start_server(cfg, model, model_path, server_cpus, spec.row_shape)
                                    mark = 0
                                except Exception as err:
                                    iface = None
                                    ifaces[key] = {"error": f"did not restart: {_first_line(err)}"}
                            if iface is None:
                                point.failed = point.failed or ifaces[key]["error"]
                            else:
                                try:
                                    measure(
                                        point,
                                        server,
                                        iface,
                                        spec,
                                        None if cfg.group == "floor" else reference,
                                        args,
                                        client_cpus,
                                    )
                                except Exception as err:
                                    point.failed = f"harness error: {_first_line(err)}"
                                    traceback.print_exc()
                            points.append(point)
                            print(
                                f"[bench]   {cfg.key:16s} {proto:4s} rows={rows:<3d} conc={conc:<3d} "
                                f"{fmt(point.rps):>7s} req/s  p50 {fmt(point.p50_ms, 2):>7s} ms  "
                                f"p99 {fmt(point.p99_ms, 2):>7s} ms  err {point.errors} wrong {point.wrong}  "
                                f"client {fmt(point.client_cpu, 2)} server {fmt(point.server_cpu, 2)} cores"
                                f"{'  FAILED: ' + point.failed[:200] if point.failed else ''}",
                                flush=True,
                            )
                if (
                    args.perf_analyzer
                    and cfg.group in args.perf_analyzer_on
                    and iface is not None
                    and "rest" in args.protocols
                ):
                    print(f"[bench] perf_analyzer against {key}", flush=True)
                    info = perf_analyzer(server, model, spec, iface, args, client_cpus)
                    info.update(server=f"{model}-{cfg.key}", model=model, server_config=cfg.key)
                    pa_results.append(info)
                    print(f"[bench]   {info['status']}", flush=True)
            finally:
                if server.proc is not None and server.proc.poll() is not None:
                    deaths.setdefault(key, []).append(
                        record_death(server, mark, "the end (it died in the last point)")
                    )
                server.stop()
                logs[key] = scan_log(server, mark)
                logs[key]["deaths"] = deaths.get(key, [])

    stem = args.out / tag
    Path(f"{stem}.json").write_text(
        json.dumps(
            no_nan(
                {
                    "tag": tag,
                    "started": started,
                    "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                    "points": [asdict(p) for p in points],
                    "interfaces": ifaces,
                    "perf_analyzer": pa_results,
                    "server_logs": logs,
                }
            ),
            indent=1,
            default=str,
            allow_nan=False,
        )
    )
    report = markdown(points, ifaces, pa_results, args, tag, started, configs, logs)
    Path(f"{stem}.md").write_text(report)
    problem = plot(points, args, tag, Path(f"{stem}.png"))
    print()
    print(report)
    print(f"[bench] wrote {stem}.md, {stem}.json" + (f"; {problem}" if problem else f", {stem}.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
