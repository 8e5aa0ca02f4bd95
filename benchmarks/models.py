"""The CPU models the benchmark serves, built in the repo (no downloads) from fixed seeds.

* ``mlp``:  256 -> 1024 -> 1024 -> 10, input ``[-1, 256]`` FP32.
* ``conv``: two 3x3 conv layers + a linear head to 10, input ``[-1, 3, 32, 32]`` FP32.
* ``sim-F-R`` (and the named shapes ``sim-launch``, ``sim-mid``, ``sim-row``): a simulated device that
  sleeps F + R x rows ms per call, input ``[-1, 16]`` FP32 (``dispatch.py``).

All are saved with ``mlflow.pytorch.save_model(..., serialization_format="pickle", input_example=...)``:
pickle, because the peer (mlserver-mlflow) loads through MLflow's pyfunc flavor, which a ``pt2`` model with a
tensor input example does not have in every MLflow version. The classes are pickled by value (cloudpickle), so
neither server needs this module on its path to unpickle them.

    python benchmarks/models.py [--out benchmarks/.work/models]      # saves both, prints where
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cloudpickle
import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
DEFAULT_DIR = HERE / ".work" / "models"
SEED = 0


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvNet(nn.Module):
    """A small CIFAR-sized net: [N, 3, 32, 32] -> [N, 10]."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 16 x 16 x 16
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 32 x 8 x 8
        )
        self.head = nn.Linear(32 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(x), 1))


class SimDevice(nn.Module):
    """A device-bound model without a device: each call sleeps `fixed + per_row * N` seconds, as the host
    does while it waits on a CUDA stream (the GIL is released), so a batcher's dispatch policy can be
    measured on a CPU machine. The answer is a cheap deterministic function of x: [N, 16] -> [N, 10]."""

    def __init__(self, fixed: float, per_row: float) -> None:
        super().__init__()
        self.fixed, self.per_row = fixed, per_row  # attributes, so that they travel in the pickle

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.fixed + self.per_row * x.shape[0])
        return x[:, :10] * 2 + 1


cloudpickle.register_pickle_by_value(sys.modules[__name__])


@dataclass(frozen=True)
class Spec:
    name: str
    cls: type[nn.Module]
    row_shape: tuple[int, ...]  # one row, without the batch dimension
    seed: int = SEED
    fixed: float | None = None  # SimDevice: seconds per call
    per_row: float | None = None  # SimDevice: seconds per row

    def build(self) -> nn.Module:
        torch.manual_seed(self.seed)
        if self.fixed is not None:
            return self.cls(self.fixed, self.per_row or 0.0).eval()
        return self.cls().eval()

    def inputs(self, rows: int, seed: int) -> np.ndarray:
        """A deterministic FP32 input of `rows` rows (distinct per seed)."""
        rng = np.random.default_rng(seed)
        return rng.standard_normal((rows, *self.row_shape), dtype=np.float32)

    def path(self, root: Path = DEFAULT_DIR, fmt: str = "pickle") -> Path:
        return root / (self.name if fmt == "pickle" else f"{self.name}-{fmt}")


def sim_spec(fixed_ms: float, per_row_ms: float) -> Spec:
    """A SimDevice of F ms per call and R ms per row, named `sim-F-R`: the saved folder says both."""
    return Spec(
        f"sim-{fixed_ms:g}-{per_row_ms:g}", SimDevice, (16,), fixed=fixed_ms / 1e3, per_row=per_row_ms / 1e3
    )


SIM_SHAPES = {  # from launch-bound to row-bound: (F ms, R ms)
    "sim-launch": (20.0, 0.1),
    "sim-mid": (5.0, 0.3),
    "sim-row": (2.0, 1.0),
}
SPECS: dict[str, Spec] = {
    "mlp": Spec("mlp", MLP, (256,)),
    "conv": Spec("conv", ConvNet, (3, 32, 32)),
    **{key: sim_spec(*shape) for key, shape in SIM_SHAPES.items()},
}


def spec_of(key: str) -> Spec:
    """SPECS[key], or a SimDevice for any `sim-F-R` (F, R in ms, e.g. `sim-3-0.5`)."""
    if key in SPECS:
        return SPECS[key]
    match = re.fullmatch(r"sim-(\d+(?:\.\d+)?)-(\d+(?:\.\d+)?)", key)
    if match is None:
        raise KeyError(f"unknown model {key!r}: one of {sorted(SPECS)} or sim-F-R (ms)")
    return sim_spec(float(match[1]), float(match[2]))


def forward(model: nn.Module, array: np.ndarray) -> np.ndarray:
    """The in-process reference that every served answer is compared with."""
    with torch.inference_mode():
        return model(torch.from_numpy(array)).numpy()


def save(spec: Spec, root: Path = DEFAULT_DIR, force: bool = False, fmt: str = "pickle") -> Path:
    """Saves `spec` under root/<name>[-<fmt>] unless it is already there (same seed, same weights).

    `fmt` "pt2" exports with the 2-row example, so that the batch dimension stays dynamic (MLflow marks
    only dims > 1 of the example dynamic).
    """
    import mlflow.pytorch
    from mlflow.models import infer_signature

    path = spec.path(root, fmt)
    marker = path / "MLmodel"
    if marker.exists() and not force:
        return path
    if path.exists():
        import shutil

        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = spec.build()
    example = spec.inputs(2, seed=12345)
    signature = infer_signature(example, forward(model, example))
    mlflow.pytorch.save_model(
        model,
        str(path),
        serialization_format=fmt,
        signature=signature,
        input_example=example,
        # Given, so that MLflow does not spend ~15 s inferring them in a subprocess.
        pip_requirements=[
            f"torch=={torch.__version__.split('+')[0]}",
            f"cloudpickle=={cloudpickle.__version__}",
        ],
    )
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--models", default=",".join(SPECS), help="names in SPECS or sim-F-R")
    parser.add_argument("--force", action="store_true", help="save again even if already saved")
    args = parser.parse_args()
    for name in args.models.split(","):
        path = save(spec_of(name), args.out, args.force)
        import yaml

        signature = yaml.safe_load((path / "MLmodel").read_text())["signature"]
        print(
            json.dumps(
                {
                    "model": name,
                    "path": str(path),
                    "inputs": json.loads(signature["inputs"]),
                    "outputs": json.loads(signature["outputs"]),
                }
            )
        )


if __name__ == "__main__":
    main()
