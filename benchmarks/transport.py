"""Transport benchmark: an image model (one 3×224×224 FP32 row per request) over REST JSON, REST binary
(Triton's binary tensor data extension, binary in and out) and gRPC raw tensors, ours against the peer.

    python benchmarks/transport.py [--duration 8] [--warmup 2] [--concurrency 1,4] [--pin [on|both]]
                                   [--servers ours,peer] [--tag NAME] [--out benchmarks/results]

Reuses run.py's parts: `servers.start_server` (ours unbatched and mlserver-mlflow, debug: false,
parallel_workers: 0, one at a time), `probe.probe`, `measure.measure` (closed loop in a client process,
every reply checked against the saved model's forward, server CPU of its process tree from /proc) and
`loadgen` ("rest-binary": tritonclient.http.aio with its defaults). Unpinned by default; `--pin` puts the
server on all cores but the last and the client on the last (as run.py does), `--pin both` runs both.
Writes `<out>/<tag>.md` and `<tag>.json`; compare figures only within one run on a small, noisy machine.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from measure import Point, measure
from models import Spec, save
from probe import PROBE_SEED, TOLERANCE, load_reference, probe
from report import fmt, machine_tag, no_nan
from servers import HERE, WORK, ServerConfig, split_cpus, start_server
from torch import nn

from mlserver_torchflow.common import first_line

TRANSPORTS = {"rest": "REST JSON", "rest-binary": "REST binary", "grpc": "gRPC raw"}
CONFIGS = {
    "ours": ServerConfig("ours-unbatched", "ours", "mlserver_torchflow.TorchFlowRuntime", None),
    "peer": ServerConfig("peer-unbatched", "peer", "mlserver_mlflow.MLflowRuntime", None),
}
BINARY_TYPE = "application/octet-stream"
TARGET_VS_JSON, TARGET_VS_GRPC = 5.0, 0.8  # binary ≥ 5× JSON; binary within 20 % of gRPC


class TinyImageNet(nn.Module):
    """[N, 3, 224, 224] -> [N, 10]: one strided 8×8 conv, ReLU, global average pool, a linear head.
    About 2.4 M multiply-adds per row, so that the transport, not the forward, sets the pace."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 8, stride=8)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


SPEC = Spec("image", TinyImageNet, (3, 224, 224))  # saved by cloudpickle by value (defined in __main__)


def binary_probe(server: Any, iface: Any, reference: Any) -> dict[str, Any]:
    """One request framed as tritonclient frames it by default: what the server answers, and (when 200)
    whether the values match the forward and the output came back binary."""
    import numpy as np
    import tritonclient.http as httpclient
    import tritonclient.http._client as built
    from loadgen import BINARY_HEADERS
    from tritonclient.http._utils import _get_inference_request as triton_builder

    array = SPEC.inputs(1, seed=PROBE_SEED)
    inp = httpclient.InferInput(iface.input_name, list(array.shape), "FP32")
    inp.set_data_from_numpy(array)  # binary_data=True
    # probe() put loadgen's plain-JSON builder into tritonclient.http: use tritonclient's own here.
    patched, built._get_inference_request = built._get_inference_request, triton_builder
    client = httpclient.InferenceServerClient(server.http)
    try:
        body, json_size = client.generate_request_body([inp])
        headers = {"Inference-Header-Content-Length": str(json_size), "Content-Type": BINARY_TYPE}
        mark = len(server.log())
        status, reply = server.post(f"/v2/models/{SPEC.name}/infer", body, headers)
        info: dict[str, Any] = {"status": status, "ok": False}
        if status != 200:
            text = json.dumps(reply) if isinstance(reply, dict | list) else reply
            # the exceptions the server logged for it, in order (the body itself is left out)
            raised = re.findall(r"^([\w.]+(?:Error|Exception)):", server.log()[mark:], re.MULTILINE)
            info["answer"] = f"HTTP {status}: {first_line(text, 200)}" + (
                f" (server log: {' -> '.join(dict.fromkeys(raised))})" if raised else ""
            )
            return info
        result = client.infer(SPEC.name, [inp], headers=dict(BINARY_HEADERS))
    finally:
        client.close()
        built._get_inference_request = patched
    out = result.get_response()["outputs"][0]
    info["binary_output"] = "binary_data_size" in (out.get("parameters") or {})
    values = result.as_numpy(out["name"])
    info["ok"] = bool(np.allclose(values, reference(array), rtol=TOLERANCE, atol=TOLERANCE))
    info["answer"] = f"200, output {out['name']} {out['shape']}, binary: {info['binary_output']}"
    return info


def run_one(pinned: bool, group: str, args: argparse.Namespace, model_path: Path, reference: Any) -> Any:
    """Every transport × concurrency against one server; returns (points, the binary probe's answer)."""
    server_cpus, client_cpus = split_cpus(
        argparse.Namespace(no_pin=not pinned, server_cpus=None, client_procs=1)
    )
    cfg, points = CONFIGS[group], []
    server = start_server(cfg, SPEC.name, model_path, server_cpus, SPEC.row_shape)
    try:
        iface = probe(server, cfg, SPEC.name, SPEC, reference, ["rest", "grpc"], [1])
        binary = binary_probe(server, iface, reference)
        iface.reply_outputs["rest-binary"] = iface.reply_outputs["rest"]
        print(f"[transport] {cfg.key} binary probe: {binary['answer']}", flush=True)
        for transport in TRANSPORTS:
            for conc in args.concurrency:
                point = Point(SPEC.name, cfg.key, group, transport, 1, conc)
                if transport == "rest-binary" and not binary["ok"]:
                    point.failed = f"not supported: HTTP {binary['status']}"
                else:
                    measure(point, server, iface, SPEC, reference, args, client_cpus)
                points.append({"pinned": pinned, **asdict(point)})
                print(
                    f"[transport] pin={pinned:d} {cfg.key:15s} {transport:11s} c={conc} {fmt(point.rps):>6s}"
                    f" req/s p50 {fmt(point.p50_ms, 2)} ms server {fmt(cpu_ms(point.__dict__), 2)} ms/req"
                    f" err {point.errors} wrong {point.wrong} {point.failed[:200]}",
                    flush=True,
                )
    finally:
        server.stop()
    return points, {**binary, "server": cfg.key, "pinned": pinned}


def cpu_ms(p: dict[str, Any]) -> float:
    """Server CPU milliseconds per good reply (server cores busy ÷ req/s)."""
    return p["server_cpu"] / p["rps"] * 1e3 if p["rps"] and p["rps"] > 0 else float("nan")


def markdown(points: list[dict[str, Any]], probes: list[dict[str, Any]], args: argparse.Namespace) -> str:
    find = {(p["pinned"], p["group"], p["protocol"], p["concurrency"]): p for p in points}

    def rps(*key: Any) -> float:
        p = find.get(key)
        return p["rps"] if p and not p["failed"] and p["ok"] else float("nan")

    def x(a: float, b: float) -> str:
        return "–" if not (a > 0 and b > 0) else f"{a / b:.2f}×"

    out = [
        "# Transport: a 3×224×224 FP32 image model over REST JSON, REST binary and gRPC raw",
        "",
        f"`{' '.join(sys.argv)}` on {machine_tag()}, {time.strftime('%Y-%m-%d %H:%M')}: 1-row requests,"
        f" closed loop, {args.warmup:g} s warm-up then {args.duration:g} s per cell, model `TinyImageNet`"
        " (strided 8×8 conv, global pool, linear to 10), ours = TorchFlowRuntime, peer = mlserver-mlflow 1.7.1,"
        " both unbatched, `parallel_workers: 0`, `debug: false`. Pinned: server on all cores but the last,"
        " client on the last. `server ms/req` = server process tree CPU (utime+stime, /proc) ÷ replies.",
        "",
        "| pinned | server | transport | conc | req/s | p50 ms | p99 ms | server ms/req | server cores"
        " | client cores | ok / err / wrong |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        cells = [p["server"], TRANSPORTS[p["protocol"]], str(p["concurrency"])]
        if p["failed"]:
            cells += [p["failed"][:120], *["–"] * 7]
        else:
            cells += [fmt(p["rps"]), fmt(p["p50_ms"], 2), fmt(p["p99_ms"], 2), fmt(cpu_ms(p), 2)]
            cells += [fmt(p["server_cpu"], 2), fmt(p["client_cpu"], 2)]
            cells += [f"{p['ok']} / {p['errors']} / {p['wrong']}"]
        out.append(f"| {'yes' if p['pinned'] else 'no'} | " + " | ".join(cells) + " |")
    out += [
        "",
        f"Targets (ours): REST binary ≥ {TARGET_VS_JSON:g}× REST JSON, and ≥ {TARGET_VS_GRPC:g}× gRPC (within 20 %).",
        "",
        "| pinned | conc | binary/JSON | binary/gRPC | targets | ours/peer JSON | ours/peer gRPC |",
        "|---|---|---|---|---|---|---|",
    ]
    for pinned in sorted({p["pinned"] for p in points}):
        for c in args.concurrency:
            j, b, g = (rps(pinned, "ours", t, c) for t in TRANSPORTS)  # JSON, binary, gRPC
            met = b / j >= TARGET_VS_JSON and b / g >= TARGET_VS_GRPC if b > 0 and j > 0 and g > 0 else None
            verdict = "–" if met is None else ("met" if met else "missed")
            peers = [x(rps(pinned, "ours", t, c), rps(pinned, "peer", t, c)) for t in ("rest", "grpc")]
            out.append(
                f"| {'yes' if pinned else 'no'} | {c} | {x(b, j)} | {x(b, g)} | {verdict} | "
                + " | ".join(peers)
                + " |"
            )
    out += ["", "A request in the binary framing (tritonclient's default), one per server start:", ""]
    out += [f"- {p['server']} (pinned: {p['pinned']}): {p['answer']}" for p in probes]
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=8.0, help="seconds measured per cell")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each window")
    parser.add_argument("--concurrency", default="1,4")
    parser.add_argument("--servers", default="ours,peer")
    parser.add_argument("--pin", nargs="?", const="on", default="off", choices=("off", "on", "both"))
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--tag", help="file stem (default <arch>-<N>cpu-<cpu>-transport)")
    parser.set_defaults(client_procs=1, client_mode="asyncio")
    args = parser.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    model_path = save(SPEC, WORK / "models")
    reference = load_reference(model_path)
    points, probes = [], []
    for pinned in {"off": [False], "on": [True], "both": [False, True]}[args.pin]:
        for group in args.servers.split(","):
            try:
                got, binary = run_one(pinned, group, args, model_path, reference)
            except Exception as err:  # e.g. no peer venv: say so in the report, go on with the rest
                print(f"[transport] {group}: {err}", flush=True)
                binary = {
                    "server": CONFIGS[group].key,
                    "pinned": pinned,
                    "answer": f"not run: {first_line(err, 200)}",
                }
                got = []
            points += got
            probes.append(binary)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / (args.tag or f"{machine_tag()}-transport")
    report = markdown(points, probes, args)
    Path(f"{stem}.md").write_text(report)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    doc = {"args": settings, "points": points, "binary_probes": probes}
    Path(f"{stem}.json").write_text(json.dumps(no_nan(doc), indent=1, default=str, allow_nan=False))
    print("\n" + report + f"[transport] wrote {stem}.md, {stem}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
