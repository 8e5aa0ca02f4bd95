"""CPU per gRPC `ModelInfer` call in one process: MLServer's servicer against the gRPC lane, interleaved.

Both are called directly with the same protobuf request (one raw input, as tritonclient sends it), on a
model of this runtime loaded in the process, so what differs is only what each does around the runtime:
MLServer's servicer and data plane with their pydantic round trip, or the lane (serving/grpc_lane.py). The
responses are checked to be the same bytes first. Short rounds alternate, and the saving is the median over
rounds of the difference between neighbouring rounds, as this machine's speed drifts within a run.

    .venv/bin/python benchmarks/grpc_lane.py [--model mlp] [--rows 1] [--calls 200] [--rounds 12]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import grpc
import models as model_defs
import numpy as np
from mlserver.grpc import dataplane_pb2 as pb
from mlserver.grpc.servicers import InferenceServicer
from mlserver.handlers import DataPlane
from mlserver.registry import MultiModelRegistry
from mlserver.settings import ModelParameters, ModelSettings, Settings

from mlserver_torchflow import TorchFlowRuntime
from mlserver_torchflow.patches.grpc_lane import DataPlaneView
from mlserver_torchflow.serving.grpc_lane import Lane


class Context:
    """What the servicer and the lane use of a call's context."""

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def trailing_metadata(self) -> tuple[()]:
        return ()

    def set_trailing_metadata(self, metadata: Any) -> None:
        self.metadata = metadata

    async def abort(self, code: Any, details: str) -> None:
        raise RuntimeError(f"{code}: {details}")


async def measure(model: str, rows: int, calls: int, rounds: int) -> dict[str, list[float]]:
    spec = model_defs.spec_of(model)
    uri = model_defs.save(spec)
    settings = ModelSettings(
        name=model, implementation=TorchFlowRuntime, parameters=ModelParameters(uri=str(uri))
    )
    registry = MultiModelRegistry(on_model_load=[], on_model_unload=[])
    await registry.load(settings)
    data_plane = DataPlane(Settings(), registry)
    servicer = InferenceServicer(data_plane, None)  # type: ignore[arg-type]
    lane = Lane(DataPlaneView(data_plane)).wrap(grpc.unary_unary_rpc_method_handler(servicer.ModelInfer))
    x = spec.inputs(rows, 0).astype(np.float32)
    tensor = pb.ModelInferRequest.InferInputTensor(name="input-0", datatype="FP32", shape=list(x.shape))
    request = pb.ModelInferRequest(model_name=model, inputs=[tensor], raw_input_contents=[x.tobytes()])
    context = Context()
    sides = {"mlserver": servicer.ModelInfer, "lane": lane.unary_unary}
    answers = [(await call(request, context)).SerializeToString() for call in sides.values()]
    assert answers[0] == answers[1], "the lane's response differs from MLServer's"
    seen: dict[str, list[float]] = {side: [] for side in sides}
    for _ in range(rounds):
        for side, call in sides.items():
            started = time.thread_time()
            for _ in range(calls):
                await call(request, context)
            seen[side].append((time.thread_time() - started) / calls * 1e6)
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mlp")
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args()
    seen = asyncio.run(measure(args.model, args.rows, args.calls, args.rounds))
    for side, values in seen.items():
        shown = " ".join(f"{v:.0f}" for v in values)
        print(f"{side:>8}: median {statistics.median(values):.0f} µs CPU a call; rounds {shown}")
    pairs = list(zip(seen["mlserver"], seen["lane"], strict=True))
    saved = statistics.median(m - lane for m, lane in pairs)
    share = statistics.median((m - lane) / m for m, lane in pairs)
    print(
        f"the lane saves {saved:.0f} µs a call, {share:.0%} of MLServer's path (medians over {len(pairs)} rounds)"
    )


if __name__ == "__main__":
    main()
