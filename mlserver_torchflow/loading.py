"""Load the weights file in whichever MLflow PyTorch format it holds, told apart by content."""

from __future__ import annotations

import enum
import logging
import sys
import threading
import zipfile
from pathlib import Path
from typing import Any

import torch

from .errors import ModelLoadError
from .layout import ModelFiles

logger = logging.getLogger("mlserver.torchflow")


class Format(str, enum.Enum):
    PICKLE = "pickle"  # torch.save of a cloudpickled nn.Module (MLflow 1.x/2.x, 3.x with "pickle")
    TORCHSCRIPT = "torchscript"  # torch.jit.save
    PT2 = "pt2"  # torch.export.save (MLflow 3.x default)


# torch.export.load keeps its deserializer in a module global, and MLServer loads models
# concurrently: two pt2 loads at once fail with "_CURRENT_DESERIALIZER is already set".
_LOAD_LOCK = threading.Lock()
_PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def sniff_format(path: Path) -> Format:
    """MLflow names pickle and TorchScript files alike (`model.pth`); only the archive tells."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
            if any(n == "archive_format" or n.endswith("/archive_format") for n in names):
                return Format.PT2
            if any(n.endswith("constants.pkl") for n in names):
                return Format.TORCHSCRIPT
            if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
                return Format.PICKLE
        else:
            with path.open("rb") as f:
                if f.read(2) in _PICKLE_MAGIC:  # torch.save before the zip format (torch < 1.6)
                    return Format.PICKLE
    except (OSError, zipfile.BadZipFile) as err:
        raise ModelLoadError(f"cannot read the weights file {path}: {err}. Re-upload the model.") from err
    raise ModelLoadError(
        f"{path} is not a PyTorch file that TorchFlowRuntime recognises (not a torch.save, "
        "torch.jit.save or torch.export.save archive). The file may be truncated or corrupt: re-upload it, "
        "or re-save the model with mlflow.pytorch.save_model."
    )


def load_module(files: ModelFiles, device: torch.device, dtype: torch.dtype | None) -> tuple[Any, Format]:
    """The model on `device`, in inference form, with floating weights cast to `dtype` if given."""
    fmt = sniff_format(files.weights)
    loader = {Format.PICKLE: _load_pickle, Format.TORCHSCRIPT: _load_torchscript, Format.PT2: _load_pt2}[fmt]
    try:
        with _LOAD_LOCK:
            module = loader(files, device)
    except ModelLoadError:
        raise
    except Exception as err:
        raise ModelLoadError(
            f"cannot load {files.weights} as {fmt.value} onto {device}: {type(err).__name__}: "
            f"{_first_line(err)}. {_hint(files)}"
        ) from err
    if fmt is not Format.PT2:  # an exported module is already in inference form and refuses eval()
        module.eval()
    if dtype is not None:
        module = module.to(dtype)
    return module, fmt


def _load_pickle(files: ModelFiles, device: torch.device) -> Any:
    _add_code_paths(files.code_paths)
    try:
        obj = torch.load(files.weights, map_location=device, weights_only=False)
    except (ModuleNotFoundError, AttributeError) as err:
        raise ModelLoadError(
            f"cannot unpickle {files.weights}: {type(err).__name__}: {_first_line(err)}. The "
            "model's class must be importable when it is loaded: save the model with "
            "mlflow.pytorch.save_model(..., code_paths=['your_module.py']) so that it ships in "
            "<model>/code, install the package that defines it in the serving image, or save "
            "it as pt2 (serialization_format='pt2'), which needs no class at all."
        ) from err
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelLoadError(
            f"{files.weights} holds a state_dict (a dict of {len(obj)} tensors), not a model: it "
            "cannot be served without the model class. Log the model itself with "
            "mlflow.pytorch.log_model(model, ...)."
        )
    if not isinstance(obj, torch.nn.Module):
        raise ModelLoadError(
            f"{files.weights} unpickles to a {type(obj).__name__}, not a torch.nn.Module. Save the "
            "model with mlflow.pytorch.save_model(model, ...)."
        )
    return obj


def _load_torchscript(files: ModelFiles, device: torch.device) -> Any:
    return torch.jit.load(str(files.weights), map_location=device)


def _load_pt2(files: ModelFiles, device: torch.device) -> Any:
    program = torch.export.load(str(files.weights))
    current = {
        t.device
        for t in (*program.state_dict.values(), *program.constants.values())
        if isinstance(t, torch.Tensor)
    }
    if current != {device}:
        from torch.export.passes import move_to_device_pass

        program = move_to_device_pass(program, device)
    return program.module()


def _add_code_paths(paths: tuple[Path, ...]) -> None:
    """`code_paths` modules must import while unpickling, and stay importable for forward()."""
    sys.path[:0] = [str(p) for p in paths if str(p) not in sys.path]


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__


def _hint(files: ModelFiles) -> str:
    saved = files.pytorch_flavor.get("pytorch_version") or "an unknown version"
    return (
        f"The model was saved with torch {saved}; this server runs torch {torch.__version__}: if they "
        "differ, serve it with the torch version it was saved with (see the README's troubleshooting)."
    )
