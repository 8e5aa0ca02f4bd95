"""cuDNN's autotuner and TF32: per-process switches a model's settings turn (engine/device.py). They
exist in CPU builds of torch too, so the switching runs here; their effect needs a GPU."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from mlserver_torchflow.config import load_settings
from mlserver_torchflow.engine import device


@pytest.fixture(autouse=True)
def restored(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    saved = (
        torch.backends.cudnn.benchmark,
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
    )
    monkeypatch.setattr(device, "_TF32", {})
    yield
    (
        torch.backends.cudnn.benchmark,
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
    ) = saved


def test_defaults_leave_torchs_own_flags_alone() -> None:
    settings = load_settings({})
    assert (settings.cudnn_benchmark, settings.tf32, settings.channels_last) == (False, "keep", False)
    torch.backends.cudnn.benchmark = True  # another model's choice
    torch.backends.cuda.matmul.allow_tf32 = True
    assert device.set_math_flags("a", settings.cudnn_benchmark, settings.tf32) is None
    assert torch.backends.cudnn.benchmark is True, "a model that did not ask turned the autotuner off"
    assert torch.backends.cuda.matmul.allow_tf32 is True


def test_tf32_on_and_off_set_both_matmuls_and_convolutions() -> None:
    assert device.set_math_flags("a", True, "on") is None
    assert torch.backends.cudnn.benchmark is True
    assert torch.backends.cuda.matmul.allow_tf32 is True and torch.backends.cudnn.allow_tf32 is True
    assert device.set_math_flags("a", False, "off") is None  # the same model changing its mind
    assert torch.backends.cuda.matmul.allow_tf32 is False and torch.backends.cudnn.allow_tf32 is False


def test_two_models_with_other_tf32_choices_are_warned_about() -> None:
    assert device.set_math_flags("resnet", False, "on") is None
    warning = device.set_math_flags("bert", False, "off")
    assert warning is not None and "resnet" in warning and "per process" in warning
    assert torch.backends.cuda.matmul.allow_tf32 is False  # the last load wins


def test_bad_tf32_values_are_refused() -> None:
    with pytest.raises(Exception, match="tf32"):
        load_settings({"tf32": "maybe"})
