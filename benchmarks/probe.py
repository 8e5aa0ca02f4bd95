"""Before any load: learn each server's tensor names and check one reply per protocol and row count
against the saved model's own forward, so that a point never measures wrong answers or a misnamed input."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from loadgen import triton_dtype
from servers import PinnedServer, ServerConfig

TOLERANCE = 1e-4
PROBE_SEED = 999  # the input of the probe requests


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
