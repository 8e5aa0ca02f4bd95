"""The servers under test: each one alone, in its own folder and session, pinned to its cores and started
with the settings written here only, so that ours, the peer and the floor differ in the runtime alone."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = HERE / ".work"
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))


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


# ------------------------------------------------------------------------------------------------ configs


@dataclass(frozen=True)
class ServerConfig:
    key: str  # e.g. "ours-batched"
    group: str  # "ours" | "peer" | "floor"
    implementation: str
    batching: tuple[int, float] | None  # (max_batch_size, max_batch_time)
    ideal: bool = False  # floor.IdealFloor: it is given the sim's F and R (suite._extra)

    def label(self) -> str:
        if self.batching is None:
            return f"{self.key} (no batching)"
        return f"{self.key} (max_batch_size {self.batching[0]}, max_batch_time {self.batching[1]})"


def server_configs(args: argparse.Namespace) -> list[ServerConfig]:
    configs = []
    if "floor" in args.servers:
        configs.append(ServerConfig("floor", "floor", "floor.FloorRuntime", None))
    for group, variants, implementation, batch in (
        ("ours", args.ours, "mlserver_torchflow.TorchFlowRuntime", args.ours_batch),
        ("peer", args.peer, "mlserver_mlflow.MLflowRuntime", args.peer_batch),
    ):
        batching = parse_batch(batch)
        if group in args.servers:
            for variant in variants:
                configs.append(
                    ServerConfig(
                        f"{group}-{variant}",
                        group,
                        implementation,
                        batching if variant == "batched" else None,
                    )
                )
    return configs


def parse_batch(text: str) -> tuple[int, float]:
    size, wait = text.split(",")
    return int(size), float(wait)


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
            # `mlserver start` puts its working directory first on sys.path: from the repo root, that
            # checkout's mlserver_torchflow would shadow BENCH_OURS_SRC. The server's own folder holds none.
            cwd=self.dir,
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
    if cfg.group == "floor" and extra is not None:  # floor.IdealFloor: its simulated device
        settings["parameters"] = {"extra": extra}
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
