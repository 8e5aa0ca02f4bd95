"""A damaged weights file is refused at load, never served: bytes flipped inside a member, the zip's
directory intact, in every format, and inside the archive a pt2 stores within itself.

Each refusal has its positive control: with `verify_weights: false` the same damaged copy loads and
answers wrong values, so the check is what stands between the damage and the client.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

from mlserver_torchflow.engine.integrity import check_weights
from mlserver_torchflow.errors import ModelLoadError
from tests import builders as b
from tests.conftest import Saved
from tests.inprocess import load, predict


def weights_of(folder: Path) -> Path:
    return next((folder / "data").glob("model.*"))


@pytest.mark.parametrize("fmt", b.FORMATS)
def test_flipped_bytes_in_a_tensor_are_refused_naming_file_and_member(
    tmp_path: Path, mlp: dict[str, Saved], fmt: str
) -> None:
    shutil.copytree(mlp[fmt].path, tmp_path / "m")
    weights = weights_of(tmp_path / "m")
    member = b.flip_member(weights, b.largest(weights))
    with pytest.raises(ModelLoadError) as info:
        load(tmp_path / "m")
    message = str(info.value)
    assert f"the weights file {weights}" in message and repr(member) in message, message
    assert "CRC-32" in message and "upload the model again" in message, message

    # Positive control: torch itself loads the damaged copy and answers with other values.
    unchecked = load(tmp_path / "m", name=f"unchecked-{fmt}", verify_weights=False)
    x = np.random.default_rng(7).random((4, 4), dtype=np.float32)
    assert not np.allclose(predict(unchecked, x), mlp[fmt].expected(x), rtol=1e-4, atol=1e-5)


def test_a_damaged_archive_inside_a_pt2_is_refused(tmp_path: Path, mlp: dict[str, Saved]) -> None:
    """pt2 stores torch.save archives within itself (its sample inputs): their members are checked too,
    and the message names the inner member."""
    shutil.copytree(mlp["pt2"].path, tmp_path / "m")
    weights = weights_of(tmp_path / "m")
    with zipfile.ZipFile(weights) as archive:
        inner = next(n for n in archive.namelist() if n.endswith(".pt"))
        inner_path = tmp_path / "inner.pt"
        inner_path.write_bytes(archive.read(inner))
    # Flip bytes inside the inner archive, whose own directory keeps the original CRC-32; the outer
    # archive is rewritten with fresh CRCs, so only the check of the inner members can see it.
    target = b.flip_member(inner_path, b.largest(inner_path, tensors_only=False))
    b.rewrite_archive(weights, weights, {inner: inner_path.read_bytes()})
    with pytest.raises(ModelLoadError, match="CRC-32") as info:
        check_weights(weights)
    assert f"{inner}:{target}" in str(info.value), info.value


def test_an_intact_file_is_checked_member_by_member(mlp: dict[str, Saved]) -> None:
    for fmt in b.FORMATS:
        weights = weights_of(mlp[fmt].path)
        checked = check_weights(weights)
        with zipfile.ZipFile(weights) as archive:
            outer = [i for i in archive.infolist() if not i.is_dir()]
        assert checked is not None and checked.members >= len(outer)
        assert checked.nbytes == sum(i.file_size for i in outer)
