"""KServe's Python SDK (kserve 0.21) against a running server, with its defaults. Run by test_clients.py
with the SDK's own virtualenv (its protobufs clash with MLServer's and tritonclient's in one process):

    <sdk python> sdk_client.py HTTP_ADDRESS GRPC_ADDRESS < cases.json

Each case is {"model", "inputs": {name: {"data", "dtype"}}}. Prints one JSON line: per transport
(`rest-binary`: `set_data_from_numpy` as is, `rest-json`: binary_data=False, `grpc`), the health
answers and every output as {"data", "dtype"}.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import numpy as np

from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig

V2 = {"float32": "FP32", "int64": "INT64", "float64": "FP64", "int32": "INT32"}


def request(case: dict[str, Any], binary: bool) -> InferRequest:
    tensors = []
    for name, spec in case["inputs"].items():
        array = np.asarray(spec["data"], dtype=spec["dtype"])
        tensor = InferInput(name, list(array.shape), V2[spec["dtype"]])
        if binary:
            tensor.set_data_from_numpy(array)  # the SDK's default: binary_data=True
        else:
            tensor.set_data_from_numpy(array, binary_data=False)
        tensors.append(tensor)
    return InferRequest(model_name=case["model"], infer_inputs=tensors)


def outputs(response: Any) -> dict[str, Any]:
    return {
        o.name: {"data": o.as_numpy().tolist(), "dtype": str(o.as_numpy().dtype)} for o in response.outputs
    }


async def rest(http: str, cases: list[dict[str, Any]], binary: bool) -> dict[str, Any]:
    client = InferenceRESTClient(RESTConfig(protocol="v2"))
    base = f"http://{http}"
    health = {"live": await client.is_server_live(base), "ready": await client.is_server_ready(base)}
    answers = {}
    for case in cases:
        health[f"model:{case['model']}"] = await client.is_model_ready(base, case["model"])
        answers[case["model"]] = outputs(
            await client.infer(base, request(case, binary), model_name=case["model"])
        )
    return {"health": health, "outputs": answers}


async def grpc(address: str, cases: list[dict[str, Any]]) -> dict[str, Any]:
    client = InferenceGRPCClient(address)
    health = {"live": await client.is_server_live(), "ready": await client.is_server_ready()}
    answers = {}
    for case in cases:
        health[f"model:{case['model']}"] = await client.is_model_ready(case["model"])
        answers[case["model"]] = outputs(await client.infer(request(case, binary=True)))
    return {"health": health, "outputs": answers}


async def main() -> None:
    http, grpc_address = sys.argv[1], sys.argv[2]
    cases = json.load(sys.stdin)
    report = {
        "rest-binary": await rest(http, cases, binary=True),
        "rest-json": await rest(http, cases, binary=False),
        "grpc": await grpc(grpc_address, cases),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    asyncio.run(main())
