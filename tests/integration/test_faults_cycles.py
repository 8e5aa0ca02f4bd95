"""50 unload/load cycles of one model through MLServer's repository API, with memory and threads flat.

The server logs in JSON (`MLSERVER_TORCHFLOW_LOG_FORMAT=json`), so the same run checks that the
runtime's load and unload lines parse, with their timings.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from tests.conftest import Saved
from tests.server import Server, write_model_settings

WARMUP_CYCLES, CYCLES = 10, 50
MAX_RSS_GROWTH = 0.10


def _status(pid: int) -> dict[str, int]:
    """VmRSS (kB) and Threads of the server process."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {"rss_kb": int(fields["VmRSS"].split()[0]), "threads": int(fields["Threads"])}


def _cycle(srv: Server) -> None:
    status, reply = srv.post("/v2/repository/models/mlp/unload", {})
    assert status == 200, reply
    status, reply = srv.post("/v2/repository/models/mlp/load", {})
    assert status == 200, reply


def test_load_unload_cycles_keep_memory_flat(tmp_path: Path, mlp: dict[str, Saved]) -> None:
    write_model_settings(tmp_path / "mlp", "mlp", mlp["pt2"].path)
    srv = Server(tmp_path, env={"MLSERVER_TORCHFLOW_LOG_FORMAT": "json"}).start()
    try:
        srv.wait_ready(["mlp"])
        assert srv.proc is not None
        for _ in range(WARMUP_CYCLES):
            _cycle(srv)
        before = _status(srv.proc.pid)
        started = time.monotonic()
        for _ in range(CYCLES):
            _cycle(srv)
        took = time.monotonic() - started
        after = _status(srv.proc.pid)

        x = np.random.default_rng(5).random((3, 4), dtype=np.float32)
        body = {
            "inputs": [{"name": "input-0", "datatype": "FP32", "shape": [3, 4], "data": x.ravel().tolist()}]
        }
        status, reply = srv.post("/v2/models/mlp/infer", body)
        assert status == 200, reply
        (out,) = reply["outputs"]
        got = np.asarray(out["data"], np.float32).reshape(out["shape"])
        np.testing.assert_allclose(got, mlp["pt2"].expected(x), rtol=1e-5, atol=1e-6)
    finally:
        srv.stop()

    growth = after["rss_kb"] / before["rss_kb"] - 1
    assert growth < MAX_RSS_GROWTH, f"RSS grew {growth:.1%} over {CYCLES} cycles: {before} -> {after}"
    assert after["threads"] <= before["threads"] + 2, f"threads leak: {before} -> {after}"
    print(f"{CYCLES} cycles in {took:.1f}s; RSS {before['rss_kb']} -> {after['rss_kb']} kB ({growth:+.1%})")

    ours = [json.loads(line) for line in srv.log().splitlines() if line.startswith('{"timestamp"')]
    loads = [e for e in ours if e["message"].startswith("loaded model mlp (pt2, keep) from ")]
    unloads = [e for e in ours if e["message"].startswith("unloaded model mlp in ")]
    # One load at startup and one per cycle; MLServer does not unload models when it stops.
    assert (len(loads), len(unloads)) == (1 + WARMUP_CYCLES + CYCLES, WARMUP_CYCLES + CYCLES)
    assert all(e["logger"] == "mlserver.torchflow" and e["level"] == "INFO" for e in loads + unloads)
    assert all(float(e["message"].rsplit(" in ", 1)[1].rstrip("s")) >= 0 for e in loads + unloads)
