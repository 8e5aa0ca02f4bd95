"""Real MLflow PyTorch models, saved by `mlflow.pytorch.save_model`, and the layouts KServe leaves them in.

Model classes are pickled by value (as when they are defined in a notebook), so the server process
needs no test module to unpickle them. Every model is built from a fixed seed.
"""

from __future__ import annotations

import importlib
import os
import shutil
import stat
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cloudpickle
import mlflow.pytorch
import numpy as np
import torch
from mlflow.models import ModelSignature, infer_signature
from mlflow.types import ColSpec, Schema, TensorSpec
from torch import nn

FORMATS = ("pickle", "torchscript", "pt2")
LAYOUTS = ("canonical", "flattened", "archive_top_folder", "logged_model", "sibling_leak", "symlink_readonly")


class MLP(nn.Module):
    def __init__(self, n_in: int = 4, n_out: int = 3) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_in, 16), nn.ReLU(), nn.Linear(16, n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 3)
        self.b = nn.Linear(2, 3)

    def forward(self, features: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        return self.a(features) - 2 * self.b(extra)


class DictOutputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.head(x)
        return {"logits": logits, "probs": torch.softmax(logits, dim=-1), "label": logits.argmax(-1)}


class Embed(nn.Module):
    """INT64 token ids in, a pooled float vector out."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 8)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.emb(ids).mean(dim=1)


class ConvNet(nn.Module):
    """A 4-D NCHW image batch in."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 5)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(image)).mean(dim=(2, 3)))


class FailsOnNegative(nn.Module):
    """The MLP, but it raises ValueError when any input value is negative: a fault inside the model."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.02)  # a busy device: concurrent requests queue up and are batched together
        if bool((x < 0).any()):
            # Says, in the server's log, whether the failing pass held other requests' rows too.
            print(f"FailsOnNegative: a pass of {x.shape[0]} rows raised", flush=True)
            raise ValueError("this model accepts no negative values")
        return self.net(x)


class SlowMLP(nn.Module):
    """The MLP behind a device that takes `delay` seconds per forward pass, whatever the rows."""

    def __init__(self, delay: float = 0.25) -> None:
        super().__init__()
        self.delay = delay
        self.net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.delay)
        return self.net(x)


class OomAbove(nn.Module):
    """The MLP on a device that runs out of memory on a batch of more than `rows` rows (a CPU twin of
    CUDA's out-of-memory: the batcher must halve the batch and answer every request)."""

    def __init__(self, rows: int = 4) -> None:
        super().__init__()
        self.rows = rows
        self.net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.005)
        if x.shape[0] > self.rows:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (CPU twin): {x.shape[0]} rows")
        return self.net(x)


class HangsOnBig(nn.Module):
    """The MLP, but a pass holding a value above 100 hangs for `hang` seconds: a stuck device."""

    def __init__(self, hang: float = 4.0) -> None:
        super().__init__()
        self.hang = hang
        self.net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x > 100).any()):
            time.sleep(self.hang)
        return self.net(x)


class BreaksWhenLoaded(nn.Module):
    """Restoring it takes two seconds and then raises: a model whose load fails late, in the server."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def __setstate__(self, state: dict[str, Any]) -> None:
        time.sleep(2.0)
        raise RuntimeError("BreaksWhenLoaded cannot be restored (on purpose)")


cloudpickle.register_pickle_by_value(sys.modules[__name__])


_CODE_MODULE = """
import torch
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.l = torch.nn.Linear(4, 3)
    def forward(self, x):
        return self.l(x) * {scale}
"""


@contextmanager
def code_module_net(src: Path, module: str, scale: int = 1) -> Iterator[tuple[nn.Module, Path]]:
    """A model whose class lives in `src/<module>.py`, so it pickles by reference, as a model saved
    with `code_paths=` does. The module is importable only inside the block: save the model there."""
    src.mkdir(parents=True, exist_ok=True)
    path = src / f"{module}.py"
    path.write_text(_CODE_MODULE.format(scale=scale))
    sys.path.insert(0, str(src))
    try:
        torch.manual_seed(0)
        yield importlib.import_module(module).Net().eval(), path
    finally:
        sys.path.remove(str(src))
        sys.modules.pop(module, None)


def build(cls: type[nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return cls().eval()


def example_for(cls: type[nn.Module], rows: int = 2) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(1)
    if cls is TwoInputs:
        return rng.random((rows, 4), dtype=np.float32), rng.random((rows, 2), dtype=np.float32)
    if cls is Embed:
        return (rng.integers(0, 50, (rows, 5), dtype=np.int64),)
    if cls is ConvNet:
        return (rng.random((rows, 3, 8, 8), dtype=np.float32),)
    return (rng.random((rows, 4), dtype=np.float32),)


def reference(model: nn.Module, *arrays: np.ndarray) -> Any:
    """The in-process forward the served answers must equal."""
    with torch.inference_mode():
        out = model(*(torch.from_numpy(a) for a in arrays))
    if isinstance(out, dict):
        return {k: v.numpy() for k, v in out.items()}
    return out.numpy()


def tensor_signature(inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> ModelSignature:
    def schema(arrays: dict[str, np.ndarray]) -> Schema:
        return Schema([TensorSpec(a.dtype, (-1, *a.shape[1:]), name) for name, a in arrays.items()])

    return ModelSignature(inputs=schema(inputs), outputs=schema(outputs))


def column_signature(columns: list[str]) -> ModelSignature:
    return ModelSignature(
        inputs=Schema([ColSpec("double", c) for c in columns]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3))]),
    )


def save(
    model: nn.Module,
    path: Path,
    fmt: str,
    example: tuple[np.ndarray, ...] | None = None,
    signature: ModelSignature | None = None,
    **kwargs: Any,
) -> Path:
    """`mlflow.pytorch.save_model` in the given format; the signature is inferred when not given."""
    if fmt == "torchscript":
        model = torch.jit.script(model)
    if signature is None and example is not None and len(example) == 1:
        signature = infer_signature(example[0], reference(model, *example))
    input_example: Any = None
    if example is not None:
        input_example = example[0] if len(example) == 1 else example
    mlflow.pytorch.save_model(
        model,
        str(path),
        serialization_format="pt2" if fmt == "pt2" else "pickle",
        signature=signature,
        input_example=input_example,
        **kwargs,
    )
    return path


def make_layout(model_dir: Path, layout: str, dest: Path, other_model: Path | None = None) -> Path:
    """Copy a canonical MLflow model folder into `dest` the way KServe's initializer leaves it.

    Returns the URI to serve (what KServe calls /mnt/models).
    """
    if layout == "canonical":
        shutil.copytree(model_dir, dest)
    elif layout == "flattened":
        # kserve 0.12-0.15 (PR 3205): files named after the URI's last segment ("model") go to the root.
        shutil.copytree(model_dir, dest)
        for weights in (dest / "data").glob("model.*"):
            weights.rename(dest / weights.name)
    elif layout == "archive_top_folder":
        archive = dest.parent / f"{dest.name}.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(model_dir, arcname="mymodel")
        dest.mkdir()
        with tarfile.open(archive) as tar:
            tar.extractall(dest, filter="data")
        archive.unlink()
    elif layout == "logged_model":
        shutil.copytree(model_dir, dest / "artifacts")
    elif layout == "sibling_leak":
        # prefix `models/churn` also pulled `models/churn-old/*` in as `-old/*`.
        shutil.copytree(model_dir, dest)
        shutil.copytree(other_model or model_dir, dest / "-old")
        for f in (dest / "-old").rglob("model.p*"):
            f.write_bytes(b"not the model being served")
    elif layout == "symlink_readonly":
        real = dest.parent / f"{dest.name}-real"
        shutil.copytree(model_dir, real)
        make_read_only(real)
        dest.symlink_to(real, target_is_directory=True)
    else:
        raise ValueError(layout)
    return dest


def rewrite_archive(src: Path, dest: Path, replace: dict[str, bytes]) -> None:
    """Copy a weights archive entry by entry (stored, as torch writes them), replacing the entries named
    in `replace` and adding those it lacks. `dest` may be `src`. Every CRC-32 is recomputed: the file is
    whole, only its content changed."""
    with zipfile.ZipFile(src) as old:
        entries = {i.filename: old.read(i.filename) for i in old.infolist()}
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as new:
        for name, data in {**entries, **replace}.items():
            new.writestr(name, data)


def make_read_only(top: Path) -> None:
    for root, dirs, files in os.walk(top):
        for name in files:
            os.chmod(Path(root) / name, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        for name in dirs:
            os.chmod(Path(root) / name, stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)
    os.chmod(top, stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP)


def snapshot(top: Path) -> dict[str, tuple[int, int]]:
    """Every file under `top` with its size and mtime: equal before and after load means nothing was written."""
    top = top.resolve()
    return {str(p.relative_to(top)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(top.rglob("*"))}


def largest(path: Path, tensors_only: bool = True) -> str:
    """The largest member holding tensor bytes: torch.save/jit storages are `<archive>/data/<n>`, pt2
    weights `<archive>/data/weights/weight_<n>`."""
    with zipfile.ZipFile(path) as archive:
        infos = [
            i
            for i in archive.infolist()
            if not tensors_only or i.filename.rsplit("/", 1)[-1].isdigit() or "/weights/weight_" in i.filename
        ]
    return max(infos, key=lambda i: i.file_size).filename


def flip_member(path: Path, member: str) -> str:
    """Flips up to 2,000 bytes of `member`'s data in place: the zip's directory, and the CRC-32 it
    records, stay as saved (what a bad copy or a bit rot does). Returns `member`."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
    assert info.compress_type == zipfile.ZIP_STORED  # torch stores members uncompressed
    data = bytearray(path.read_bytes())
    # The local header's name and extra lengths (the extra field may differ from the directory's).
    name_len = int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little")
    extra_len = int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    for k in range(start, start + min(2000, info.file_size)):
        data[k] ^= 0x5A
    path.write_bytes(bytes(data))
    return member
