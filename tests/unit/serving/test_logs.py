"""The operator's log lines: one per failed request, load/unload timings, and the JSON format."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from mlserver.types import InferenceRequest, Parameters, RequestInput

from mlserver_torchflow import TorchFlowRuntime
from mlserver_torchflow.config import server_settings
from mlserver_torchflow.errors import InvalidInput, ModelExecutionError, ModelLoadError
from mlserver_torchflow.serving import logs
from tests import builders as b
from tests.conftest import Saved
from tests.inprocess import load


@pytest.fixture(autouse=True)
def text_logs_after() -> Iterator[None]:
    yield
    logs.configure("text")


@pytest.fixture(scope="module")
def fails_on_negative(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = b.build(b.FailsOnNegative)
    return b.save(model, tmp_path_factory.mktemp("neg") / "m", "pickle", b.example_for(b.FailsOnNegative))


def _request(values: list[float], rid: str | None, **headers: str) -> InferenceRequest:
    return InferenceRequest(
        id=rid,
        parameters=Parameters(headers=headers) if headers else None,
        inputs=[RequestInput(name="input-0", datatype="FP32", shape=[1, len(values)], data=values)],
    )


def _fail(model: TorchFlowRuntime, payload: InferenceRequest) -> Exception:
    with pytest.raises(Exception) as info:
        asyncio.run(model.predict(payload))
    return info.value  # type: ignore[return-value]


def test_a_refused_request_is_one_warning_with_id_model_status(
    mlp: dict[str, Saved], caplog: pytest.LogCaptureFixture
) -> None:
    model = load(mlp["pt2"].path)
    caplog.set_level(logging.INFO, logger="mlserver.torchflow")
    err = _fail(model, _request([1.0, 2.0], "req-400", **{"x-request-id": "trace-9"}))
    assert isinstance(err, InvalidInput)
    assert str(err).endswith("(request id req-400)"), "the client's body must carry the id to report"
    failed = [r for r in caplog.records if getattr(r, "request_id", None) == "req-400"]
    assert len(failed) == 1
    (record,) = failed
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert (record.status, record.model_name, record.x_request_id) == (400, "m", "trace-9")  # type: ignore[attr-defined]
    line = record.getMessage()
    assert line.startswith("request req-400 to model m failed with 400 (x-request-id trace-9): input")
    assert "\n" not in line


def test_a_model_failure_is_one_error_with_the_traceback(
    fails_on_negative: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = load(fails_on_negative)
    caplog.set_level(logging.INFO, logger="mlserver.torchflow")
    err = _fail(model, _request([-1.0, 2.0, 3.0, 4.0], "req-500"))
    assert isinstance(err, ModelExecutionError)
    assert str(err) == (
        "model 'm' failed on this request: ValueError: this model accepts no negative values "
        "(request id req-500)"
    )
    (record,) = [r for r in caplog.records if getattr(r, "request_id", None) == "req-500"]
    assert record.levelno == logging.ERROR and record.status == 500  # type: ignore[attr-defined]
    assert record.exc_info is not None and record.exc_info[0] is ValueError, "the traceback must stay"
    ok = asyncio.run(model.predict(_request([1.0, 2.0, 3.0, 4.0], "req-ok")))
    assert ok.outputs[0].shape == [1, 3]


def test_load_and_unload_lines_carry_timings(mlp: dict[str, Saved], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mlserver.torchflow")
    model = load(mlp["pt2"].path)
    asyncio.run(model.unload())
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("loaded model m (pt2, keep) from ") and m.endswith("s") for m in messages), (
        messages
    )
    assert any(m.startswith("unloaded model m in ") and m.endswith("s") for m in messages), messages


@pytest.fixture
def json_lines(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The server setting `log_format: json`, read afresh; the next model built goes back to text."""
    monkeypatch.setenv("MLSERVER_TORCHFLOW_LOG_FORMAT", "json")
    server_settings.cache_clear()
    yield
    monkeypatch.delenv("MLSERVER_TORCHFLOW_LOG_FORMAT")
    server_settings.cache_clear()
    logs.configure(None)


def test_json_format_gives_one_parseable_object_per_line(
    fails_on_negative: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    json_lines: None,
) -> None:
    caplog.set_level(logging.INFO, logger="mlserver.torchflow")  # as MLServer sets it
    model = load(fails_on_negative)
    _fail(model, _request([1.0], 'quote"and\nnewline'))
    _fail(model, _request([-1.0, 2.0, 3.0, 4.0], "req-json-500"))
    asyncio.run(model.unload())
    lines = capsys.readouterr().out.splitlines()
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    # Every line of ours is a JSON object (other libraries may print too, e.g. when tests run together).
    assert not [line for line in lines if not line.startswith("{") and "to model m failed" in line]
    by_id = {e["request_id"]: e for e in entries if e["request_id"]}
    refused, failed = by_id['quote"and\nnewline'], by_id["req-json-500"]
    assert {k: refused[k] for k in ("level", "logger", "model", "status")} == {
        "level": "WARNING",
        "logger": "mlserver.torchflow",
        "model": "m",
        "status": 400,
    }
    assert refused["timestamp"].endswith("+00:00") and "exception" not in refused
    assert failed["level"] == "ERROR" and failed["status"] == 500
    assert "Traceback" in failed["exception"] and "ValueError" in failed["exception"]
    assert any(e["message"].startswith("unloaded model m in ") for e in entries)


def test_json_follows_mlserver_structured_logging_by_default() -> None:
    handler = logging.StreamHandler()
    handler.formatter = type("F", (logging.Formatter,), {"use_structured_logging": True})()
    logging.getLogger("mlserver").addHandler(handler)
    try:
        assert logs.configure(None) == "json"
        assert logs.configure("text") == "text"
    finally:
        logging.getLogger("mlserver").removeHandler(handler)
    assert logs.configure(None) == "text"


def test_mlserver_generated_ids_reach_the_body(mlp: dict[str, Saved]) -> None:
    """Without a client id the body names the one MLServer generated (dataplane._prepare_payload)."""
    model = load(mlp["pt2"].path)
    err = _fail(model, _request([1.0], None))
    assert "(request id" not in str(err)  # no id at all (in-process): nothing to add
    x = np.ones((1, 4), np.float32)
    assert asyncio.run(model.predict(_request(x.ravel().tolist(), "id-ok"))).id == "id-ok"


def test_a_grpc_request_without_id_logs_a_dash(
    mlp: dict[str, Saved], caplog: pytest.LogCaptureFixture
) -> None:
    """MLServer's gRPC converter leaves a missing id as "" and generates none (REST gets a UUID)."""
    model = load(mlp["pt2"].path)
    caplog.set_level(logging.INFO, logger="mlserver.torchflow")
    err = _fail(model, _request([1.0], "", **{"x-request-id": "mesh-7"}))
    assert "(request id" not in str(err)
    (record,) = [r for r in caplog.records if getattr(r, "status", None) == 400]
    assert record.request_id is None  # type: ignore[attr-defined]
    assert record.getMessage().startswith("request - to model m failed with 400 (x-request-id mesh-7): ")


@pytest.mark.parametrize("where", ["extra", "env"])
def test_log_format_per_model_is_refused_with_the_server_setting_named(
    fails_on_negative: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """One log stream serves every model: a per-model format would make the last model loaded win."""
    extra = {"log_format": "json"} if where == "extra" else {}
    if where == "env":
        monkeypatch.setenv("MLSERVER_MODEL_TORCHFLOW_LOG_FORMAT", "json")
    with pytest.raises(ModelLoadError, match="log_format is a server setting.*MLSERVER_TORCHFLOW_LOG_FORMAT"):
        load(fails_on_negative, **extra)
