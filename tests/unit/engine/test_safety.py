"""Untrusted model files: `allow_pickle: false`, and nothing read outside the model folder.

Each refusal is checked against a positive control, so that a test cannot pass because the
malicious file was harmless to begin with.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from mlserver_torchflow.errors import ModelLoadError
from tests.builders import rewrite_archive
from tests.conftest import Saved
from tests.inprocess import load, predict


class _CreatesFile:
    """Unpickling this object creates `marker`: what an attacker's payload would run instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def _evil_model(tmp_path: Path, saved: Saved, legacy: bool = False) -> tuple[Path, Path]:
    """An MLflow model folder whose model.pth runs code when unpickled; returns (folder, marker)."""
    folder, marker = tmp_path / "m", tmp_path / "unpickled"
    shutil.copytree(saved.path, folder)
    weights = folder / "data" / "model.pth"
    # legacy: torch.save's format before torch 1.6, a stream of pickles rather than a zip
    torch.save(_CreatesFile(marker), weights, _use_new_zipfile_serialization=not legacy)
    return folder, marker


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_allow_pickle_false_refuses_a_pickle_before_unpickling_it(
    tmp_path: Path, mlp: dict[str, Saved], legacy: bool
) -> None:
    folder, marker = _evil_model(tmp_path, mlp["pickle"], legacy)
    with pytest.raises(ModelLoadError, match=r"model\.pth is a pickled model .*allow_pickle is false.*pt2"):
        load(folder, allow_pickle=False)
    assert not marker.exists(), "the file was unpickled although allow_pickle is false"
    # Control: the default loads pickles, so the payload really runs (and is then refused as no module).
    with pytest.raises(ModelLoadError, match="not a torch.nn.Module"):
        load(folder)
    assert marker.exists()


def test_allow_pickle_false_from_the_environment(
    tmp_path: Path, mlp: dict[str, Saved], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, marker = _evil_model(tmp_path, mlp["pickle"])
    monkeypatch.setenv("MLSERVER_MODEL_TORCHFLOW_ALLOW_PICKLE", "false")
    with pytest.raises(ModelLoadError, match="allow_pickle is false"):
        load(folder)
    assert not marker.exists()


def test_allow_pickle_false_refuses_a_bare_pickle_without_mlmodel(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    (tmp_path / "store").mkdir()
    torch.save(_CreatesFile(marker), tmp_path / "store" / "classifier.pt")
    with pytest.raises(ModelLoadError, match="classifier.pt is a pickled model"):
        load(tmp_path / "store", allow_pickle=False)
    assert not marker.exists()


@pytest.mark.parametrize("fmt", ["torchscript", "pt2"])
def test_allow_pickle_false_still_serves_pt2_and_torchscript(mlp: dict[str, Saved], fmt: str) -> None:
    model = load(mlp[fmt].path, allow_pickle=False)
    x = np.random.default_rng(3).random((5, 4), dtype=np.float32)
    np.testing.assert_allclose(predict(model, x), mlp[fmt].expected(x), rtol=1e-5, atol=1e-6)


def _pt2_with_pickled_weight(tmp_path: Path, saved: Saved) -> tuple[Path, Path]:
    """A pt2 program whose first weight is marked `use_pickle`: torch.export.load unpickles it with
    `torch.load(weights_only=False)` (torch 2.13, pt2_archive/_package.py)."""
    folder, marker = tmp_path / "m", tmp_path / "unpickled"
    shutil.copytree(saved.path, folder)
    weights = folder / "data" / "model.pt2"
    original = tmp_path / "original.pt2"
    shutil.move(weights, original)
    with zipfile.ZipFile(original) as archive:
        config_name = next(n for n in archive.namelist() if n.endswith("_weights_config.json"))
        config = json.loads(archive.read(config_name))
    first = next(iter(config["config"].values()))
    first["use_pickle"] = True
    payload = io.BytesIO()
    torch.save(_CreatesFile(marker), payload)
    prefix = config_name.split("data/weights/")[0]
    rewrite_archive(
        original,
        weights,
        {
            config_name: json.dumps(config).encode(),
            f"{prefix}data/weights/{first['path_name']}": payload.getvalue(),
        },
    )
    return folder, marker


def test_allow_pickle_false_keeps_pt2_weights_to_tensors(tmp_path: Path, mlp: dict[str, Saved]) -> None:
    folder, marker = _pt2_with_pickled_weight(tmp_path, mlp["pt2"])
    with pytest.raises(ModelLoadError, match=r"cannot load .*model\.pt2 as pt2"):
        load(folder, allow_pickle=False)
    assert not marker.exists(), "torch.export.load unpickled a payload although allow_pickle is false"
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ, "the override leaked out of the load"
    with pytest.raises(ModelLoadError):  # control: with pickles allowed the payload runs
        load(folder)
    assert marker.exists()


def test_allow_pickle_false_refuses_pt2_opaque_python_constants(
    tmp_path: Path, mlp: dict[str, Saved]
) -> None:
    shutil.copytree(mlp["pt2"].path, tmp_path / "m")
    weights = tmp_path / "m" / "data" / "model.pt2"
    shutil.move(weights, tmp_path / "original.pt2")
    rewrite_archive(tmp_path / "original.pt2", weights, {"model/data/constants/opaque_obj_0": b"\x80\x04N."})
    with pytest.raises(ModelLoadError, match=r"opaque_obj_0.*allow_pickle is false"):
        load(tmp_path / "m", allow_pickle=False)


# --- nothing outside the model folder is read ---------------------------------------------------


def _copy(saved: Saved, tmp_path: Path) -> tuple[Path, Path]:
    """The model at tmp/store/m, and an `outside` folder next to the store."""
    folder, outside = tmp_path / "store" / "m", tmp_path / "outside"
    shutil.copytree(saved.path, folder)
    outside.mkdir()
    return folder, outside


def test_a_weights_symlink_out_of_the_folder_is_refused(tmp_path: Path, mlp: dict[str, Saved]) -> None:
    folder, outside = _copy(mlp["pt2"], tmp_path)
    link = folder / "data" / "model.pt2"
    shutil.move(link, outside / "model.pt2")
    link.symlink_to(outside / "model.pt2")
    with pytest.raises(ModelLoadError) as info:
        load(folder)
    message = str(info.value)
    assert str(link) in message and str(outside / "model.pt2") in message and "symlink" in message, message
    # Control: the same link pointing inside the folder is fine.
    (folder / "blobs").mkdir()
    shutil.move(outside / "model.pt2", folder / "blobs" / "model.pt2")
    link.unlink()
    link.symlink_to(Path("..") / "blobs" / "model.pt2")
    assert load(folder) is not None


def test_a_data_folder_symlink_out_of_the_folder_is_refused(tmp_path: Path, mlp: dict[str, Saved]) -> None:
    folder, outside = _copy(mlp["pt2"], tmp_path)
    shutil.move(folder / "data", outside / "data")
    (folder / "data").symlink_to(outside / "data", target_is_directory=True)
    with pytest.raises(ModelLoadError) as info:
        load(folder)
    message = str(info.value)
    assert str(folder / "data") in message and str(outside / "data") in message, message


def test_a_symlinked_mlmodel_out_of_the_folder_is_refused(tmp_path: Path, mlp: dict[str, Saved]) -> None:
    folder, outside = _copy(mlp["pt2"], tmp_path)
    shutil.move(folder / "MLmodel", outside / "MLmodel")
    (folder / "MLmodel").symlink_to(outside / "MLmodel")
    with pytest.raises(ModelLoadError, match=f"MLmodel file .*{outside / 'MLmodel'}.*outside"):
        load(folder)


def _edit_mlmodel(folder: Path, edit: Any) -> None:
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    edit(mlmodel)
    (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel))


@pytest.mark.parametrize("key", ["artifact_path", "serving_input_path"])
def test_an_input_example_path_out_of_the_folder_is_refused(
    tmp_path: Path, mlp: dict[str, Saved], key: str
) -> None:
    folder, outside = _copy(mlp["pt2"], tmp_path)
    (outside / "secret.json").write_text("[[1, 2, 3, 4]]")
    _edit_mlmodel(
        folder,
        lambda m: m.setdefault("saved_input_example_info", {}).update({key: "../../outside/secret.json"}),
    )
    with pytest.raises(ModelLoadError, match=r"secret.json.*outside the model folder"):
        load(folder)
    with pytest.raises(ModelLoadError, match="outside the model folder"):  # even when warm-up is off
        load(folder, warmup=False)


def test_a_code_folder_out_of_the_folder_is_refused(tmp_path: Path, mlp: dict[str, Saved]) -> None:
    folder, _outside = _copy(mlp["pickle"], tmp_path)
    _edit_mlmodel(folder, lambda m: m["flavors"]["pytorch"].update(code="../../outside"))
    with pytest.raises(ModelLoadError, match=r"flavors.pytorch.code .*outside the model folder"):
        load(folder)


def test_a_code_module_symlinked_out_of_the_folder_is_refused(tmp_path: Path, mlp: dict[str, Saved]) -> None:
    folder, outside = _copy(mlp["pickle"], tmp_path)
    (outside / "evil.py").write_text("raise SystemExit('imported from outside')\n")
    (folder / "code").mkdir()
    (folder / "code" / "evil.py").symlink_to(outside / "evil.py")
    _edit_mlmodel(folder, lambda m: m["flavors"]["pytorch"].update(code="code"))
    with pytest.raises(ModelLoadError, match=r"module in the code folder .*evil.py.*outside"):
        load(folder)


@pytest.mark.parametrize("name", ["requirements.txt", "python_env.yaml"])
def test_environment_files_symlinked_out_of_the_folder_are_refused(
    tmp_path: Path, mlp: dict[str, Saved], name: str
) -> None:
    folder, outside = _copy(mlp["pt2"], tmp_path)
    shutil.move(folder / name, outside / name)
    (folder / name).symlink_to(outside / name)
    with pytest.raises(ModelLoadError, match=f"{name}.*{outside / name}.*outside the model folder"):
        load(folder)


def test_a_symlinked_root_inside_itself_still_loads(tmp_path: Path, mlp: dict[str, Saved]) -> None:
    """OCI modelcars mount /mnt/models as a symlink: the root is resolved first, then compared."""
    real, _outside = _copy(mlp["pt2"], tmp_path)
    (tmp_path / "mnt").symlink_to(real, target_is_directory=True)
    assert load(tmp_path / "mnt", allow_pickle=False) is not None
