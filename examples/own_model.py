"""Save your own two-input PyTorch model so that mlserver-torchflow serves it, and write its settings.

    python examples/own_model.py                  # writes my-model/ ; then: mlserver start my-model
    python examples/own_model.py --register my-cnn --tracking-uri http://localhost:5000
                                                  # logs + registers it as my-cnn@champion instead

Replace `TwoInputCNN` and `example_inputs()` with your model and a batch of real inputs; the rest stays.
Walkthrough: docs/own-model.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import mlflow
import mlflow.pytorch
import numpy as np
import torch
from mlflow.models import Model, infer_signature


class TwoInputCNN(torch.nn.Module):
    """image [N, 3, 32, 32] and side [N, 4] in; a dict of logits [N, 3] and probs [N, 3] out."""

    def __init__(self) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, kernel_size=3, padding=1),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(8, 16, kernel_size=3, padding=1),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
        )
        self.head = torch.nn.Linear(16 + 4, 3)

    def forward(self, image: torch.Tensor, side: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.head(torch.cat([self.features(image), side], dim=1))
        return {"logits": logits, "probs": torch.softmax(logits, dim=1)}


def example_inputs() -> dict[str, np.ndarray]:
    """A batch of TWO rows, keyed by forward()'s argument names, in forward()'s order.

    Two rows, not one: the pt2 program is exported from this example, and a dimension that is 1 here is
    fixed to 1 in the program (the server would then take one row per request).
    """
    rng = np.random.default_rng(0)
    return {
        "image": rng.random((2, 3, 32, 32), dtype=np.float32),
        "side": rng.random((2, 4), dtype=np.float32),
    }


def save(model: torch.nn.Module, inputs: dict[str, np.ndarray], path: Path) -> None:
    """Save in MLflow 3's default format (torch.export, data/model.pt2) with a signature and an example."""
    with torch.no_grad():
        outputs = model(*(torch.from_numpy(v) for v in inputs.values()))
    # Named inputs and outputs: these names are what clients send and get back. infer_signature needs scipy.
    signature = infer_signature(inputs, {k: v.numpy() for k, v in outputs.items()})
    # pt2 wants the example as a tuple in forward()'s order (a dict is refused). MLflow exports the model
    # from it but does not write a tuple example to disk ...
    mlflow.pytorch.save_model(model, str(path), signature=signature, input_example=tuple(inputs.values()))
    # ... so write input_example.json the way MLflow writes a dict of arrays, and name it in the MLmodel:
    # the server runs it before it reports ready (warm-up), so a model that cannot run never goes live.
    (path / "input_example.json").write_text(json.dumps({k: v.tolist() for k, v in inputs.items()}))
    mlmodel = Model.load(str(path))
    mlmodel.saved_input_example_info = {"artifact_path": "input_example.json", "type": "ndarray"}
    mlmodel.save(str(path / "MLmodel"))


def write_settings(out: Path, uri: str, extra: dict[str, str]) -> None:
    """model-settings.json (the model) and settings.json (the server) in `out`: `mlserver start out`."""
    model_settings = {
        "name": out.name,
        "implementation": "mlserver_torchflow.TorchFlowRuntime",
        "parameters": {
            "uri": uri,  # relative to this file, or an MLflow URI
            "extra": {
                "device": "auto",  # the GPU when there is one, else the CPU
                "max_batch_size": 32,  # merge concurrent requests into passes of up to 32 rows
                "max_batch_time": 0.005,  # a request waits at most 5 ms for company (never when alone)
                **extra,
            },
        },
    }
    server_settings = {
        "debug": False,  # MLServer's default true logs at DEBUG and may send tracebacks to clients
        "parallel_workers": 0,  # the model runs in the server process, not in a worker with its own copy
        "grpc_max_message_length": 67108864,  # 64 MiB gRPC messages (MLServer's default: 4 MiB)
        # No ports here: MLServer's defaults, REST 8080, gRPC 8081, metrics 8082, or MLSERVER_HTTP_PORT,
        # MLSERVER_GRPC_PORT, MLSERVER_METRICS_PORT.
    }
    (out / "model-settings.json").write_text(json.dumps(model_settings, indent=2) + "\n")
    (out / "settings.json").write_text(json.dumps(server_settings, indent=2) + "\n")


def write_request(out: Path, inputs: dict[str, np.ndarray]) -> None:
    """request.json: the example as a V2 inference request, for curl -d @request.json."""
    body = {
        "inputs": [
            {"name": k, "datatype": "FP32", "shape": list(v.shape), "data": v.flatten().tolist()}
            for k, v in inputs.items()
        ]
    }
    (out / "request.json").write_text(json.dumps(body) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--out", default="my-model", help="folder to write (default: my-model)")
    parser.add_argument("--register", metavar="NAME", help="log to MLflow and register as NAME instead")
    parser.add_argument("--alias", default="champion", help="alias of the registered version")
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"))
    args = parser.parse_args()

    torch.manual_seed(0)  # the same weights on every run
    model = TwoInputCNN().eval()
    inputs = example_inputs()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    if args.register is None:
        shutil.rmtree(out / "model", ignore_errors=True)  # save_model refuses to overwrite
        save(model, inputs, out / "model")
        write_settings(out, "./model", {})
    else:
        if not args.tracking_uri:
            sys.exit("--register needs --tracking-uri or MLFLOW_TRACKING_URI (an `mlflow server` address)")
        mlflow.set_tracking_uri(args.tracking_uri)
        with tempfile.TemporaryDirectory() as tmp:
            save(model, inputs, Path(tmp) / "model")
            with mlflow.start_run(run_name=args.register) as run:
                mlflow.log_artifacts(str(Path(tmp) / "model"), artifact_path="model")
        version = mlflow.register_model(f"runs:/{run.info.run_id}/model", args.register)
        mlflow.MlflowClient().set_registered_model_alias(args.register, args.alias, version.version)
        print(f"registered {args.register} version {version.version} as @{args.alias}")
        write_settings(out, f"models:/{args.register}@{args.alias}", {"tracking_uri": args.tracking_uri})
    write_request(out, inputs)
    print(f"wrote {out}/: model-settings.json, settings.json, request.json. Next: mlserver start {out}")


if __name__ == "__main__":
    main()
