"""Find an MLflow PyTorch model on disk, whatever shape the storage-initializer left it in.

No torch import here: this runs before we know which device or format we need, and its tests are fast.
The folder is read-only (KServe mounts /mnt/models read-only, and an OCI modelcar makes it a
symlink): nothing here writes, unpacks or caches.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..common import logger
from ..errors import ModelLoadError, ModelNotFoundOnDisk

MLMODEL = "MLmodel"
WEIGHT_NAMES = ("model.pth", "model.pt2")
# Without an MLmodel (KServe's `pytorch` format), any file with these endings is a candidate.
BARE_SUFFIXES = (".pt2", ".pth", ".pt")
STATE_DICT = "state_dict.pth"
# Files next to the MLmodel that the runtime reads (versions.py): refused when they lead outside.
SIDE_FILES = ("requirements.txt", "python_env.yaml", "conda.yaml")
EXAMPLE_NAMES = ("input_example.json", "serving_input_example.json")
MAX_MLMODEL_DEPTH = 2
MAX_SEARCH_DEPTH = 4


@dataclass(frozen=True)
class ModelFiles:
    """Where each part of one model lives; every path is inside `root`."""

    uri: str
    root: Path
    model_dir: Path
    weights: Path
    mlmodel: dict[str, Any] = field(default_factory=dict)
    code_paths: tuple[Path, ...] = ()

    @property
    def pytorch_flavor(self) -> dict[str, Any]:
        return dict((self.mlmodel.get("flavors") or {}).get("pytorch") or {})


def locate(uri: str) -> ModelFiles:
    """Resolve `uri` (symlinks included) and find the MLmodel, the weights and the code folder."""
    root = Path(uri).expanduser().resolve()
    if not root.exists():
        raise ModelNotFoundOnDisk(
            f"model URI {uri!r} resolves to {root}, which does not exist. Check `parameters.uri` in "
            "model-settings.json (relative paths start at that file's folder) or the storageUri "
            "of the InferenceService."
        )
    if root.is_file():
        if root.name == MLMODEL:
            return _from_mlmodel(uri, root.parent, root)
        return ModelFiles(uri=uri, root=root.parent, model_dir=root.parent, weights=root)

    mlmodel = find_mlmodel(root)
    if mlmodel is None:
        return _bare_weights(uri, root)
    return _from_mlmodel(uri, root, mlmodel)


def find_mlmodel(root: Path) -> Path | None:
    """The shallowest MLmodel up to two levels down; a tie at that depth is ambiguous."""
    level = [root]
    for _depth in range(MAX_MLMODEL_DEPTH + 1):
        found = sorted(d / MLMODEL for d in level if (d / MLMODEL).is_file())
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            listed = ", ".join(str(p) for p in found)
            raise ModelLoadError(
                f"found {len(found)} MLmodel files at the same depth under {root}: {listed}. "
                "Point `parameters.uri` (or the storageUri) at the folder of the one to serve."
            )
        level = [c for d in level for c in _subdirs(d)]
    return None


def read_mlmodel(path: Path) -> dict[str, Any]:
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ModelLoadError(
            f"cannot read {path}: {err}. The MLmodel file must be the YAML that MLflow writes; "
            "re-save the model with mlflow.pytorch.save_model or log_model."
        ) from err
    if not isinstance(content, dict):
        raise ModelLoadError(f"{path} is not an MLflow MLmodel (expected a YAML mapping).")
    return content


def _from_mlmodel(uri: str, root: Path, mlmodel_path: Path) -> ModelFiles:
    model_dir = mlmodel_path.parent
    inside(root, mlmodel_path, "the MLmodel file")
    mlmodel = read_mlmodel(mlmodel_path)
    flavors = mlmodel.get("flavors") or {}
    if "pytorch" not in flavors:
        raise ModelLoadError(
            f"{mlmodel_path} has no `pytorch` flavor (flavors: {sorted(flavors) or 'none'}). "
            "TorchFlowRuntime serves models saved with mlflow.pytorch; use the matching MLServer "
            "runtime for other flavors."
        )
    flavor = flavors["pytorch"] or {}
    model_data = str(flavor.get("model_data") or "data")
    data_path = inside(root, model_dir / model_data, f"flavors.pytorch.model_data ({model_data!r})")

    candidates: list[Path] = []
    if data_path.is_file():
        candidates.append(data_path)
    candidates += [data_path / n for n in WEIGHT_NAMES]
    # kserve 0.12-0.15 flattening writes files named after the URI's last segment at the root.
    candidates += [d / n for d in dict.fromkeys((model_dir, root)) for n in WEIGHT_NAMES]
    weights = next((c for c in candidates if c.is_file()), None)
    if weights is None:
        weights = next(_search(model_dir, lambda p: p.name in WEIGHT_NAMES), None)
    if weights is None:
        raise _nothing_found(
            uri, root, [str(c) for c in candidates], f"{model_dir}/**/{{model.pth,model.pt2}}"
        )
    inside(root, weights, "the weights file")
    if weights != candidates[0] and weights.parent != data_path:
        logger.warning("weights not at %s; using %s (storage-initializer layout)", data_path, weights)
    for name in (*SIDE_FILES, *example_names(mlmodel)):
        if os.path.lexists(model_dir / name):
            inside(root, model_dir / name, f"{name!r} (read from next to the MLmodel)")

    return ModelFiles(
        uri=uri,
        root=root,
        model_dir=model_dir,
        weights=weights,
        mlmodel=mlmodel,
        code_paths=_code_paths(root, model_dir, flavor.get("code")),
    )


def _bare_weights(uri: str, root: Path) -> ModelFiles:
    """No MLmodel anywhere: serve a single weights file without a signature."""
    named = next(_search(root, lambda p: p.name in WEIGHT_NAMES), None)
    found = [named] if named else [p for p in _search(root, lambda p: p.suffix in BARE_SUFFIXES)]
    found = [p for p in found if p.name != STATE_DICT]
    if len(found) == 1:
        inside(root, found[0], "the weights file")
        logger.warning("no MLmodel under %s: serving %s without a signature", root, found[0])
        return ModelFiles(uri=uri, root=root, model_dir=found[0].parent, weights=found[0])
    if len(found) > 1:
        raise ModelLoadError(
            f"no MLmodel under {root} and {len(found)} weights files: "
            f"{', '.join(str(p) for p in found[:5])}. Serve an MLflow model folder, or point "
            "`parameters.uri` at one file."
        )
    raise _nothing_found(
        uri, root, [f"{MLMODEL} at depth 0-{MAX_MLMODEL_DEPTH}"], f"{root}/**/*{{.pth,.pt2,.pt}}"
    )


def _nothing_found(uri: str, root: Path, looked: list[str], searched: str) -> ModelNotFoundOnDisk:
    state_dict = next(_search(root, lambda p: p.name == STATE_DICT), None)
    if state_dict is not None:
        return ModelNotFoundOnDisk(
            f"{state_dict} is a state_dict (weights only, from mlflow.pytorch.log_state_dict): it "
            "cannot be served without the model class. Log the model itself with "
            "mlflow.pytorch.log_model(model, ...), which writes an MLmodel and data/model.pt2 or "
            f"data/model.pth. (URI {uri!r}, resolved root {root})"
        )
    return ModelNotFoundOnDisk(
        f"no PyTorch weights found for model URI {uri!r} (resolved root {root}). Looked for: "
        f"{', '.join(looked)}; then searched {searched}. Check that the storageUri points at the "
        "MLflow model folder (the one holding MLmodel) and that the upload finished."
    )


def _code_paths(root: Path, model_dir: Path, code: Any) -> tuple[Path, ...]:
    """`<model>/code` for `code_paths=`; the root too when the initializer flattened a module there."""
    if not code:
        return ()
    paths = []
    code_dir = inside(root, model_dir / str(code), f"flavors.pytorch.code ({code!r})")
    if code_dir.is_dir():
        for entry in sorted(code_dir.iterdir()):  # modules imported from there while unpickling
            inside(root, entry, "a module in the code folder")
        paths.append(code_dir)
    if any(model_dir.glob("*.py")):
        paths.append(model_dir)
    return tuple(paths)


def example_names(mlmodel: dict[str, Any]) -> list[str]:
    """The input example files the MLmodel names (saved_input_example_info), then MLflow's defaults."""
    info = mlmodel.get("saved_input_example_info") or {}
    named = [str(info[k]) for k in ("artifact_path", "serving_input_path") if info.get(k)]
    return list(dict.fromkeys([*named, *EXAMPLE_NAMES]))


def inside(root: Path, path: Path, what: str) -> Path:
    """`path` with symlinks resolved, if it stays in `root` (already resolved); else a load error."""
    resolved = path.resolve()
    if resolved != root and root not in resolved.parents:
        link = " through a symlink" if path.is_symlink() or _any_link(root, path) else ""
        raise ModelLoadError(
            f"{what} {path} points{link} to {resolved}, outside the model folder {root}; refusing to "
            "read it. The MLmodel and the model folder must only reference files inside the folder: "
            "copy the file into it instead of linking or pointing to it."
        )
    return resolved


def _any_link(root: Path, path: Path) -> bool:
    """Whether some folder between `root` and `path` is a symlink (path may be relative and odd)."""
    return any(p.is_symlink() for p in path.parents if root in p.parents)


def _subdirs(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


def _search(top: Path, match: Any) -> Iterator[Path]:
    """Breadth-first, shallowest first; skips folders holding another MLmodel (a sibling leak)."""
    level = [top]
    for _depth in range(MAX_SEARCH_DEPTH + 1):
        for folder in level:
            try:
                files = sorted(p for p in folder.iterdir() if p.is_file())
            except OSError:
                continue
            yield from (p for p in files if match(p))
        level = [c for d in level for c in _subdirs(d) if not (c / MLMODEL).is_file()]
