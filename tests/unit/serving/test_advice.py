"""One log line at load for each MLServer default that hurts the model, and for a skipped warm-up."""

from __future__ import annotations

import logging

import pytest
import torch
from mlserver.logging import configure_logger
from mlserver.settings import Settings

from mlserver_torchflow.patches import internals
from mlserver_torchflow.serving import advice
from tests.conftest import Saved
from tests.inprocess import load


@pytest.fixture
def warnings_seen(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, logger="mlserver.torchflow")
    return caplog


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "mlserver.torchflow"]


def test_debug_on_is_named_with_what_to_set(
    mlp: dict[str, Saved], warnings_seen: pytest.LogCaptureFixture
) -> None:
    mlserver_logger = logging.getLogger("mlserver")
    level, handlers = mlserver_logger.level, list(mlserver_logger.handlers)
    configure_logger(Settings(debug=True))  # what `mlserver start` does with MLServer's default
    try:
        load(mlp["pt2"].path, name="advice-debug")
    finally:
        mlserver_logger.setLevel(level)
        mlserver_logger.handlers[:] = handlers
    lines = [m for m in messages(warnings_seen) if "debug: true" in m]
    assert len(lines) == 1 and "traceback" in lines[0] and '"debug": false' in lines[0], lines
    load(mlp["pt2"].path, name="advice-no-debug")
    assert len([m for m in messages(warnings_seen) if "debug: true" in m]) == 1


def test_a_skipped_warm_up_says_why(
    two_inputs: dict[str, Saved], warnings_seen: pytest.LogCaptureFixture
) -> None:
    """A two-input pt2 has no input example on disk (MLflow does not write a tuple example)."""
    load(two_inputs["pt2"].path, name="advice-no-example")
    assert any("warm-up skipped" in m and "input_example" in m for m in messages(warnings_seen))
    warnings_seen.clear()
    warnings_seen.set_level(logging.INFO, logger="mlserver.torchflow")
    load(two_inputs["pt2"].path, name="advice-warmup-off", warmup=False)  # the user's own choice
    said = [r for r in warnings_seen.records if "warm-up" in r.getMessage()]
    assert [r.levelno for r in said] == [logging.INFO], "said once, not as a warning"
    assert "warmup: false" in said[0].getMessage()


def test_a_gpu_model_in_a_parallel_worker_is_told_to_use_zero_workers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No GPU here: the device is only named (a torch.device needs no GPU), and the worker check, real
    in the next test, is set to true."""
    assert advice.advise("m", [torch.device("cuda", 0)], True, True) == []  # not in a worker
    monkeypatch.setattr(advice, "in_mlserver_worker", lambda: True)
    (line,) = advice.advise("m", [torch.device("cuda", 0)], True, True)
    assert "parallel worker on cuda:0" in line and '"parallel_workers": 0' in line
    assert advice.advise("m", [torch.device("cpu")], True, True) == []  # CPU copies per worker are fine


def test_this_process_is_not_an_mlserver_worker() -> None:
    assert internals.in_mlserver_worker() is False
