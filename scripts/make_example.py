"""Build the example model served by `mlserver start .`: a small MLP saved by MLflow as pt2 (MLflow 3's default).

Run again to rebuild `model-settings/mlp/model` (for example after a torch upgrade: pt2 files are
tied to the torch version that exported them).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow.pytorch
import numpy as np
import torch
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

TARGET = Path(__file__).resolve().parent.parent / "model-settings" / "mlp" / "model"


class MLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def main() -> None:
    torch.manual_seed(0)
    model = MLP().eval()
    example = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 4))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3))]),
    )
    shutil.rmtree(TARGET, ignore_errors=True)
    mlflow.pytorch.save_model(
        model, str(TARGET), serialization_format="pt2", signature=signature, input_example=example
    )
    print(f"saved {TARGET}")


if __name__ == "__main__":
    main()
