"""Load the weights file in whichever MLflow PyTorch format it holds, told apart by content."""

from __future__ import annotations

import enum
import sys
import threading
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import torch

from ..common import first_line, major_minor
from ..errors import ModelLoadError
from ..patches.torch_load import pt2_weights_on_cpu, weights_only
from ..protocol.shapes import ShapeRules
from .guards import rules_of
from .layout import ModelFiles


class Format(enum.StrEnum):
    PICKLE = "pickle"  # torch.save of a cloudpickled nn.Module (MLflow 1.x/2.x, 3.x with "pickle")
    TORCHSCRIPT = "torchscript"  # torch.jit.save
    PT2 = "pt2"  # torch.export.save (MLflow 3.x default)


# torch.export.load keeps its deserializer in a module global, and MLServer loads models
# concurrently: two pt2 loads at once fail with "_CURRENT_DESERIALIZER is already set".
_LOAD_LOCK = threading.Lock()
_PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
# torch.export.pt2_archive.constants.OPAQUE_OBJ_FILENAME_PREFIX: constants read with pickle.loads.
_PT2_PICKLED_CONSTANT = "opaque_obj_"


def sniff_format(path: Path) -> Format:
    """MLflow names pickle and TorchScript files alike (`model.pth`); only the archive tells."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                infos = archive.infolist()
            names = [i.filename for i in infos]
            if infos and min(i.header_offset for i in infos) > 0:
                # torch writes its first entry at byte 0: an archive found further in is one stored
                # inside the file (a pt2 keeps torch.save archives), so the file's own end is missing.
                raise ModelLoadError(_damaged(path, size, "a zip archive whose end is missing (truncated)"))
            if any(n == "archive_format" or n.endswith("/archive_format") for n in names):
                return Format.PT2
            if any(n.endswith("constants.pkl") for n in names):
                return Format.TORCHSCRIPT
            if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
                return Format.PICKLE
        elif head[:2] in _PICKLE_MAGIC:  # torch.save before the zip format (torch < 1.6)
            return Format.PICKLE
    except (OSError, zipfile.BadZipFile) as err:
        raise ModelLoadError(
            f"cannot read the weights file {path}: {type(err).__name__}: {err}. Check that the file is "
            "readable by the server's user, or re-upload the model."
        ) from err
    if size == 0:
        found = "empty"
    elif head.startswith(b"PK\x03\x04"):
        found = "the start of a zip archive without its end (truncated)"
    else:
        found = f"not a PyTorch file (it starts with bytes {head.hex(' ')})"
    raise ModelLoadError(_damaged(path, size, found))


def _damaged(path: Path, size: int, found: str) -> str:
    return (
        f"the weights file {path} ({size} bytes) is {found}; expected a torch.save, torch.jit.save "
        "or torch.export.save archive. The copy is incomplete or corrupt: compare its size with the "
        "file in the model store and upload the model again (mlflow.pytorch.log_model / save_model)."
    )


class Loaded(NamedTuple):
    """A loaded model: the module, its format, and (pt2 only) its exported input-shape rules."""

    module: Any
    format: Format
    rules: ShapeRules | None = None


def load_module(
    files: ModelFiles, device: torch.device, dtype: torch.dtype | None, allow_pickle: bool = True
) -> Loaded:
    """The model on `device`, in inference form, with floating weights cast to `dtype` if given.

    With `allow_pickle` false nothing in the file goes through Python's unpickler: a pickled model is
    refused from its zip directory alone, and a pt2 program loads with every torch.load inside
    `torch.export.load` forced to `weights_only` (tensors only).
    """
    fmt = sniff_format(files.weights)
    if not allow_pickle:
        refuse_pickle(files.weights, fmt)
    loader = {Format.PICKLE: _load_pickle, Format.TORCHSCRIPT: _load_torchscript, Format.PT2: _load_pt2}[fmt]
    try:
        with _LOAD_LOCK, weights_only(not allow_pickle):
            module, rules = loader(files, device)
    except ModelLoadError:
        raise
    except Exception as err:
        raise ModelLoadError(
            f"cannot load {files.weights} as {fmt.value} onto {device}: {type(err).__name__}: "
            f"{first_line(err)}. {_hint(files)}"
        ) from err
    if fmt is not Format.PT2:  # an exported module is already in inference form and refuses eval()
        module.eval()
    if dtype is not None:
        module = module.to(dtype)
    return Loaded(module, fmt, rules)


def refuse_pickle(path: Path, fmt: Format) -> None:
    """`allow_pickle: false`: decided from the zip directory and magic bytes, before any unpickling."""
    if fmt is Format.PICKLE:
        raise ModelLoadError(
            f"{path} is a pickled model (torch.save of an nn.Module) and allow_pickle is false: loading "
            "a pickle runs whatever code the file holds, so it is refused unread. Re-save the model as "
            "pt2 (mlflow.pytorch.log_model(..., serialization_format='pt2'), MLflow 3's default) or as "
            "TorchScript (log a torch.jit.script'ed model), or set allow_pickle: true if you trust "
            "where the file comes from."
        )
    if fmt is Format.PT2:
        with zipfile.ZipFile(path) as archive:
            opaque = [n for n in archive.namelist() if Path(n).name.startswith(_PT2_PICKLED_CONSTANT)]
        if opaque:
            raise ModelLoadError(
                f"{path} is a pt2 program holding {len(opaque)} pickled Python object(s) "
                f"({', '.join(opaque[:3])}) and allow_pickle is false: torch.export.load would unpickle "
                "them. Export the model without opaque Python constants, or set allow_pickle: true if "
                "you trust where the file comes from."
            )


def _load_pickle(files: ModelFiles, device: torch.device) -> tuple[Any, None]:
    _add_code_paths(files.code_paths)
    try:
        obj = torch.load(files.weights, map_location=device, weights_only=False)
    except (ModuleNotFoundError, AttributeError) as err:
        raise ModelLoadError(
            f"cannot unpickle {files.weights}: {type(err).__name__}: {first_line(err)}. "
            f"{_code_hint(files)} The model's class must be importable when it is loaded: save the "
            "model with mlflow.pytorch.save_model(..., code_paths=['your_module.py']) so that it ships "
            "in <model>/code, install the package that defines it in the serving image, or save it as "
            "pt2 (serialization_format='pt2'), which needs no class at all."
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
    return obj, None


def _load_torchscript(files: ModelFiles, device: torch.device) -> tuple[Any, None]:
    return torch.jit.load(str(files.weights), map_location=device), None


def _load_pt2(files: ModelFiles, device: torch.device) -> tuple[Any, ShapeRules | None]:
    with pt2_weights_on_cpu(device):
        program = torch.export.load(str(files.weights))
    current = {
        t.device
        for t in (*program.state_dict.values(), *program.constants.values())
        if isinstance(t, torch.Tensor)
    }
    if current != {device}:
        from torch.export.passes import move_to_device_pass

        program = move_to_device_pass(program, device)
    return program.module(), rules_of(program)


def _add_code_paths(paths: tuple[Path, ...]) -> None:
    """`code_paths` modules must import while unpickling, and stay importable for forward()."""
    sys.path[:0] = [str(p) for p in paths if str(p) not in sys.path]


def _hint(files: ModelFiles) -> str:
    saved = str(files.pytorch_flavor.get("pytorch_version") or "")
    if saved and major_minor(saved) == major_minor(torch.__version__):
        return (
            f"The model was saved with torch {saved}, as this server runs, so either the file itself is "
            "damaged (compare its size with the file in the model store and upload the model again) "
            "or the model's own code raised while it was restored (fix the error above)."
        )
    return (
        f"The model was saved with torch {saved or 'an unknown version'}; this server runs torch "
        f"{torch.__version__}: serve it with the torch version it was saved with, or, if the versions "
        "are not the cause, upload the model again (the file may be damaged)."
    )


def _code_hint(files: ModelFiles) -> str:
    """What the MLmodel says about `code_paths`, and what is really there."""
    code = files.pytorch_flavor.get("code")
    if not code:
        return "The MLmodel lists no code folder (flavors.pytorch.code is empty)."
    folder = files.model_dir / str(code)
    if not folder.is_dir():
        return (
            f"The MLmodel lists the code folder {folder} (flavors.pytorch.code), which is missing: "
            "upload the whole model folder, code/ included (KServe 0.17+ skips empty files such as an "
            "empty __init__.py: put a comment in it)."
        )
    modules = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    return f"The code folder {folder} holds: {', '.join(modules[:10]) or 'nothing'}."
