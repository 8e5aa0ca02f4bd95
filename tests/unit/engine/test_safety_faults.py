"""Faults at load: damaged weights in every format, broken signatures, a missing `code/` module.

Every failure must name the file involved and say what to do about it.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import mlflow.pytorch
import numpy as np
import pytest
import torch
import yaml

from mlserver_torchflow.errors import ModelLoadError
from tests import builders as b
from tests.conftest import Saved
from tests.inprocess import load, predict

DAMAGE: dict[str, Callable[[bytes], bytes]] = {
    "truncated_half": lambda data: data[: len(data) // 2],
    "truncated_tail": lambda data: data[:-30],  # only the zip's end record is lost
    "garbage": lambda data: bytes(range(256)) * 4,
    "empty": lambda data: b"",
}
FOUND = {
    "truncated_half": "truncated",
    "truncated_tail": "truncated",
    "garbage": "not a PyTorch file (it starts with bytes 00 01 02",
    "empty": "(0 bytes) is empty",
}


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("fmt", b.FORMATS)
def test_damaged_weights_name_the_file_and_the_fix(
    tmp_path: Path, mlp: dict[str, Saved], fmt: str, damage: str
) -> None:
    shutil.copytree(mlp[fmt].path, tmp_path / "m")
    weights = next((tmp_path / "m" / "data").glob("model.*"))
    weights.write_bytes(DAMAGE[damage](weights.read_bytes()))
    with pytest.raises(ModelLoadError) as info:
        load(tmp_path / "m")
    message = str(info.value)
    assert f"the weights file {weights} ({weights.stat().st_size} bytes)" in message, message
    assert FOUND[damage] in message, message
    assert "upload the model again" in message, message


def _copy_with_member(src: Path, dst: Path, weights_name: str, member: str, content: bytes) -> Path:
    """Copies the model folder; in its weights archive, the member ending in `member` gets `content`."""
    shutil.copytree(src, dst)
    weights = dst / "data" / weights_name
    with zipfile.ZipFile(weights) as archive:
        names = [n for n in archive.namelist() if n.endswith(member)]
    b.rewrite_archive(weights, weights, dict.fromkeys(names, content))
    return weights


def test_a_complete_archive_with_a_damaged_member_says_the_file_is_damaged(
    tmp_path: Path, mlp: dict[str, Saved]
) -> None:
    """The zip directory is intact, so the format is known; torch fails on the content."""
    weights = _copy_with_member(
        mlp["pickle"].path, tmp_path / "m", "model.pth", "data.pkl", b"\x80\x02garbage"
    )
    with pytest.raises(ModelLoadError) as info:
        load(tmp_path / "m")
    message = str(info.value)
    assert f"cannot load {weights} as pickle" in message, message
    assert "the file itself is damaged" in message and "upload the model again" in message, message
    assert "torch 2.13" not in message or torch.__version__.startswith("2.13")


def test_an_older_torch_gets_the_version_hint_instead(tmp_path: Path, mlp: dict[str, Saved]) -> None:
    _copy_with_member(mlp["pt2"].path, tmp_path / "m", "model.pt2", "models/model.json", b"{not json")
    mlmodel = tmp_path / "m" / "MLmodel"
    mlmodel.write_text(
        mlmodel.read_text().replace(f"pytorch_version: {torch.__version__}", "pytorch_version: 2.1.0")
    )
    with pytest.raises(
        ModelLoadError, match=r"saved with torch 2.1.0; this server runs torch .*upload the model"
    ):
        load(tmp_path / "m")


def _set_signature_inputs(folder: Path, value: object) -> None:
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    if value is None:
        mlmodel.pop("signature")
    else:
        mlmodel["signature"]["inputs"] = value
    (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel))


def test_invalid_json_in_the_signature_names_the_mlmodel(tmp_path: Path, mlp: dict[str, Saved]) -> None:
    shutil.copytree(mlp["pt2"].path, tmp_path / "m")
    _set_signature_inputs(tmp_path / "m", '[{"type": "tensor", ')
    with pytest.raises(ModelLoadError) as info:
        load(tmp_path / "m")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'm' / 'MLmodel'}: the MLmodel's signature.inputs"), message
    assert "Expecting property name" in message and "Re-save the model" in message, message


def test_a_missing_signature_still_loads_and_serves(tmp_path: Path, mlp: dict[str, Saved]) -> None:
    shutil.copytree(mlp["pickle"].path, tmp_path / "m")
    _set_signature_inputs(tmp_path / "m", None)
    model = load(tmp_path / "m")
    assert asyncio.run(model.metadata()).inputs == []  # no signature: any tensors, in request order
    x = np.random.default_rng(4).random((3, 4), dtype=np.float32)
    np.testing.assert_allclose(predict(model, x), mlp["pickle"].expected(x), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def with_code(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pickled model whose class lives in a `code_paths` module (not pickled by value)."""
    tmp = tmp_path_factory.mktemp("code")
    with b.code_module_net(tmp / "src", "tf_safety_net") as (net, module):
        mlflow.pytorch.save_model(
            net, str(tmp / "model"), serialization_format="pickle", code_paths=[str(module)]
        )
    return tmp / "model"


def test_a_missing_code_folder_names_it_and_the_fix(tmp_path: Path, with_code: Path) -> None:
    shutil.copytree(with_code, tmp_path / "m")
    shutil.rmtree(tmp_path / "m" / "code")
    with pytest.raises(ModelLoadError) as info:
        load(tmp_path / "m")
    message = str(info.value)
    assert f"cannot unpickle {tmp_path / 'm' / 'data' / 'model.pth'}: ModuleNotFoundError" in message, message
    assert f"code folder {tmp_path / 'm' / 'code'} (flavors.pytorch.code), which is missing" in message
    assert "upload the whole model folder" in message, message


def test_a_module_missing_from_the_code_folder_lists_what_is_there(tmp_path: Path, with_code: Path) -> None:
    shutil.copytree(with_code, tmp_path / "m")
    (tmp_path / "m" / "code" / "tf_safety_net.py").rename(tmp_path / "m" / "code" / "renamed.py")
    with pytest.raises(
        ModelLoadError, match=r"tf_safety_net.*code folder .*code holds: renamed.py.*code_paths"
    ):
        load(tmp_path / "m")
    sys.modules.pop("tf_safety_net", None)
