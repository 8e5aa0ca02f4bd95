"""What `verify_weights` costs: the CRC-32 check of a weights file, in seconds per GB, per format.

    python benchmarks/integrity.py --mb 1024 [--repeat 3]

Saves one model of about `--mb` megabytes in each MLflow format (pickle, TorchScript, pt2) with real
`mlflow.pytorch.save_model`, then times `check_weights` (the check the runtime runs at load) against
`torch.load` of the same file. The page cache is warm after the first read (as it is in a pod, right
after the storage-initializer wrote the file); the first repeat is reported separately.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import mlflow.pytorch
import torch

from mlserver_torchflow.engine.integrity import check_weights


class Wide(torch.nn.Module):
    def __init__(self, width: int, layers: int) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(*(torch.nn.Linear(width, width) for _ in range(layers)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def save(kind: str, model: torch.nn.Module, example: torch.Tensor, folder: Path) -> Path:
    if kind == "torchscript":
        mlflow.pytorch.save_model(torch.jit.trace(model, example), folder, serialization_format="pickle")
    else:
        fmt = "pt2" if kind == "pt2" else "pickle"
        mlflow.pytorch.save_model(model, folder, serialization_format=fmt, input_example=example.numpy())
    return next((folder / "data").glob("model.*"))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mb", type=int, default=1024, help="approximate weights size per model")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    width = 2048
    layers = max(1, round(args.mb * 1e6 / (4 * width * width)))
    model = Wide(width, layers).eval()
    example = torch.zeros(2, width)
    print("| format | file MB | first check s | check s/GB (warm) | torch.load s/GB (warm) |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("pickle", "torchscript", "pt2"):
            path = save(kind, model, example, Path(tmp) / kind)
            gb = path.stat().st_size / 1e9
            times = []
            for _ in range(args.repeat):
                started = time.perf_counter()
                assert check_weights(path) is not None
                times.append(time.perf_counter() - started)
            started = time.perf_counter()
            if kind == "torchscript":
                torch.jit.load(str(path))
            elif kind == "pt2":
                torch.export.load(str(path))
            else:
                torch.load(path, weights_only=False)
            loaded = time.perf_counter() - started
            warm = min(times[1:] or times)
            print(f"| {kind} | {gb * 1e3:.0f} | {times[0]:.2f} | {warm / gb:.2f} | {loaded / gb:.2f} |")


if __name__ == "__main__":
    main()
