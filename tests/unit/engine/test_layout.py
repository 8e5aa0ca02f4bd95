"""Finding the model in every layout a KServe storage-initializer leaves, and the messages when it is not there."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from mlserver_torchflow.engine.layout import locate
from mlserver_torchflow.errors import ModelLoadError, ModelNotFoundOnDisk
from tests import builders as b
from tests.conftest import Saved


@pytest.mark.parametrize("layout", b.LAYOUTS)
@pytest.mark.parametrize("fmt", ["pickle", "pt2"])
def test_every_layout_finds_the_weights(tmp_path: Path, mlp: dict[str, Saved], layout: str, fmt: str) -> None:
    uri = b.make_layout(mlp[fmt].path, layout, tmp_path / "mnt", other_model=mlp["torchscript"].path)
    files = locate(str(uri))
    suffix = ".pt2" if fmt == "pt2" else ".pth"
    assert files.weights.name == f"model{suffix}"
    assert (files.model_dir / "MLmodel").is_file()
    assert "-old" not in files.weights.parts, "picked the leaked sibling"
    assert files.root == Path(uri).resolve()
    assert files.weights.resolve().is_relative_to(files.root)
    expected_dir = {"archive_top_folder": "mymodel", "logged_model": "artifacts"}.get(layout)
    assert files.model_dir.name == (expected_dir or files.root.name)


def test_flattened_weights_are_found_at_the_root(tmp_path: Path, mlp: dict[str, Saved]) -> None:
    uri = b.make_layout(mlp["pickle"].path, "flattened", tmp_path / "mnt")
    assert not (uri / "data" / "model.pth").exists()
    assert (uri / "data" / "pickle_module_info.txt").exists()
    assert locate(str(uri)).weights == (uri / "model.pth").resolve()


def test_nothing_found_names_uri_root_and_places(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "empty")
    with pytest.raises(ModelNotFoundOnDisk) as info:
        locate(str(link))
    message = str(info.value)
    assert str(link) in message and str(tmp_path / "empty") in message and "MLmodel" in message


def test_weights_missing_next_to_mlmodel(tmp_path: Path, mlp: dict[str, Saved]) -> None:
    shutil.copytree(mlp["pt2"].path, tmp_path / "m")
    (tmp_path / "m" / "data" / "model.pt2").unlink()
    with pytest.raises(ModelNotFoundOnDisk) as info:
        locate(str(tmp_path / "m"))
    assert "data/model.pt2" in str(info.value) and "data/model.pth" in str(info.value)


def test_state_dict_alone_gets_its_own_message(tmp_path: Path) -> None:
    folder = tmp_path / "sd"
    folder.mkdir()
    torch.save(b.build(b.MLP).state_dict(), folder / "state_dict.pth")
    with pytest.raises(ModelNotFoundOnDisk, match="state_dict.*model class"):
        locate(str(folder))


def test_missing_uri(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundOnDisk, match="does not exist"):
        locate(str(tmp_path / "nope"))


def test_two_models_at_the_same_depth_are_ambiguous(tmp_path: Path, mlp: dict[str, Saved]) -> None:
    shutil.copytree(mlp["pt2"].path, tmp_path / "mnt" / "a")
    shutil.copytree(mlp["pickle"].path, tmp_path / "mnt" / "b")
    with pytest.raises(ModelLoadError, match="same depth"):
        locate(str(tmp_path / "mnt"))


def test_model_data_may_not_escape_the_folder(tmp_path: Path, mlp: dict[str, Saved]) -> None:
    shutil.copytree(mlp["pt2"].path, tmp_path / "m")
    mlmodel = tmp_path / "m" / "MLmodel"
    mlmodel.write_text(mlmodel.read_text().replace("model_data: data", "model_data: ../../etc"))
    with pytest.raises(ModelLoadError, match="outside the model folder"):
        locate(str(tmp_path / "m"))


def test_not_a_pytorch_model(tmp_path: Path) -> None:
    (tmp_path / "MLmodel").write_text("flavors:\n  sklearn: {}\n")
    with pytest.raises(ModelLoadError, match="no `pytorch` flavor.*sklearn"):
        locate(str(tmp_path))


def test_bare_weights_without_mlmodel(tmp_path: Path, mlp: dict[str, Saved]) -> None:
    """KServe's `pytorch` format: a weights file and nothing else."""
    shutil.copy(mlp["torchscript"].path / "data" / "model.pth", tmp_path / "classifier.pt")
    files = locate(str(tmp_path))
    assert files.weights == (tmp_path / "classifier.pt").resolve() and files.mlmodel == {}
    shutil.copy(tmp_path / "classifier.pt", tmp_path / "other.pt")
    with pytest.raises(ModelLoadError, match="2 weights files"):
        locate(str(tmp_path))


def test_uri_may_name_the_mlmodel_file(mlp: dict[str, Saved]) -> None:
    files = locate(str(mlp["pt2"].path / "MLmodel"))
    assert files.weights.name == "model.pt2"
