"""Request limits (413 from the declared shape, before any conversion) and the REST body cap."""

from __future__ import annotations

import asyncio
import gzip
import tracemalloc
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi import HTTPException
from mlserver.rest.requests import Request
from mlserver.types import InferenceRequest, RequestInput, TensorData

from mlserver_torchflow import body_limit, limits
from mlserver_torchflow.codec import decode_request
from mlserver_torchflow.errors import InvalidInput, RequestTooLarge
from mlserver_torchflow.limits import RequestLimits
from mlserver_torchflow.settings import load_settings, server_settings
from mlserver_torchflow.signature import Interface, TensorSpec
from tests.conftest import Saved

SINGLE = Interface(inputs=(TensorSpec("input-0", "FP32", (-1, 4)),), outputs=None)
FREE = Interface(inputs=None, outputs=None)


@pytest.fixture(autouse=True)
def _fresh_server_settings() -> Iterator[None]:
    """Tests change the body cap's env var; no cached value may outlive them."""
    server_settings.cache_clear()
    yield
    server_settings.cache_clear()


def req(shape: list[int], data: Any, name: str = "input-0", datatype: str = "FP32") -> InferenceRequest:
    # model_construct: the codec must cope with what gRPC hands it, which pydantic never saw.
    inp = RequestInput.model_construct(
        name=name, datatype=datatype, shape=shape, data=TensorData.model_construct(root=data)
    )
    return InferenceRequest.model_construct(inputs=[inp])


def test_rows_over_the_limit_is_a_413_naming_input_limit_and_setting() -> None:
    small = RequestLimits(max_rows=8, max_elements=0)
    decode_request(req([8, 4], [0.0] * 32), SINGLE, small)
    with pytest.raises(RequestTooLarge) as err:
        decode_request(req([9, 4], [0.0] * 36), SINGLE, small)
    assert err.value.status_code == 413
    text = str(err.value)
    assert "'input-0'" in text and "9 rows" in text and "8 rows" in text and "max_request_rows" in text


def test_elements_over_the_limit_is_a_413() -> None:
    small = RequestLimits(max_rows=0, max_elements=40)
    with pytest.raises(RequestTooLarge, match=r"holds 44 values.*limit of 40.*max_request_elements"):
        decode_request(req([11, 4], [0.0] * 44), SINGLE, small)


def test_astronomical_shape_is_refused_before_anything_is_allocated() -> None:
    tracemalloc.start()
    try:
        for shape in ([2**40, 4], [2**62, 4], [1, 2**70]):
            with pytest.raises((RequestTooLarge, InvalidInput)):
                decode_request(req(shape, [0.0] * 4), FREE)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, f"decoding refused shapes allocated {peak} bytes"


def test_limits_off_still_never_allocates_for_a_lying_shape() -> None:
    off = RequestLimits(max_rows=0, max_elements=0)
    with pytest.raises(InvalidInput, match="holds 4611686018427387904 values"):
        decode_request(req([2**60, 4], [0.0] * 4), SINGLE, off)
    with pytest.raises(RequestTooLarge, match="dimension above"):
        decode_request(req([0, 2**63], []), FREE, off)


def test_raw_bytes_are_checked_against_the_limit_before_their_size() -> None:
    small = RequestLimits(max_rows=2, max_elements=0)
    with pytest.raises(RequestTooLarge):
        decode_request(req([3, 4], b"\0" * 4), SINGLE, small)


@pytest.mark.parametrize(
    ("shape", "data", "match"),
    [
        ([0, 4], [], "holds no values"),
        ([1] * 40, [1.0], "40 dimensions"),
        ([1, 4], [[[1.0, 2.0, 3.0, 4.0]]], "nested data has shape"),
        ([2, 4], [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]], "nested data has shape"),
        ([1, 4], "1,2,3,4", "must be a list"),
        ([1, 4], {"a": 1}, "must be a list"),
        ([1, 4], None, "must be a list"),
        ([1, 4], [0.0] * 1000, "at least 1000"),
        ([1, 4], [1.0, None, 2.0, 3.0], "non-numbers"),
        ([1, 4], [2**100, 1, 1, 1], "non-numbers"),
    ],
)
def test_malformed_data_is_a_400(shape: list[int], data: Any, match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        decode_request(req(shape, data), FREE if len(shape) != 2 else SINGLE)


def test_data_nested_past_numpys_rank_is_a_400() -> None:
    deep: Any = [1.0]
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(InvalidInput, match="not a rectangular list"):
        decode_request(req([1, 4], deep), SINGLE)


def test_a_huge_client_name_is_clipped_in_the_message() -> None:
    name = "x" * 1_000_000
    with pytest.raises(InvalidInput) as err:
        decode_request(req([1, 4], [0.0] * 4, name=name), SINGLE)
    assert len(str(err.value)) < 1000
    with pytest.raises(InvalidInput) as err:
        decode_request(req([1, 4], [0.0] * 4, name=name, datatype="X" * 100_000), FREE)
    assert len(str(err.value)) < 1000


def test_nan_and_inf_pass_for_floats() -> None:
    (array,) = decode_request(req([1, 4], [float("nan"), float("inf"), -float("inf"), 1e39]), SINGLE)
    assert np.isnan(array[0, 0]) and np.isinf(array[0, 1]) and np.isinf(array[0, 3])


def test_settings_defaults_env_and_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlserver_torchflow.errors import ModelLoadError

    defaults = load_settings(None).request_limits()
    assert defaults == RequestLimits(limits.DEFAULT_MAX_ROWS, limits.DEFAULT_MAX_ELEMENTS)
    monkeypatch.setenv("MLSERVER_MODEL_TORCHFLOW_MAX_REQUEST_ROWS", "7")
    assert load_settings({"max_request_elements": 0}).request_limits() == RequestLimits(7, 0)
    with pytest.raises(ModelLoadError, match="max_request_rows"):
        load_settings({"max_request_rows": -1})


def test_each_model_applies_its_own_limits(mlp: dict[str, Saved]) -> None:
    from tests.unit.test_runtime_load import load, predict

    tight = load(mlp["pt2"].path, max_request_rows=1)
    roomy = load(mlp["pt2"].path, max_request_rows=100)
    x = np.ones((2, 4), np.float32)
    with pytest.raises(RequestTooLarge, match="limit of 1 rows"):
        predict(tight, x)
    assert predict(roomy, x).shape == (2, 3)


# --- the REST body cap ---------------------------------------------------------------------------


def _body(payload: bytes, headers: dict[str, str], chunk: int = 65536) -> bytes:
    chunks = [payload[i : i + chunk] for i in range(0, len(payload), chunk)] or [b""]
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)
    ]

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v2/models/m/infer",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    return asyncio.run(Request(scope, receive).body())


def test_body_cap_by_content_length_stream_and_gunzip(monkeypatch: pytest.MonkeyPatch) -> None:
    body_limit.install()
    monkeypatch.setenv(body_limit.ENV, "1000")
    server_settings.cache_clear()
    assert _body(b"x" * 1000, {"content-length": "1000"}) == b"x" * 1000
    for headers in ({"content-length": "1001"}, {}):  # declared, then streamed (chunked)
        with pytest.raises(HTTPException) as err:
            _body(b"x" * 1001, headers, chunk=100)
        assert err.value.status_code == 413 and body_limit.ENV in str(err.value.detail)
    monkeypatch.setenv(body_limit.ENV, "20000")
    server_settings.cache_clear()
    bomb = gzip.compress(b"0" * 10_000_000)
    assert len(bomb) < 20000
    with pytest.raises(HTTPException, match="gunzipped") as err:
        _body(bomb, {"content-encoding": "gzip"})
    assert err.value.status_code == 413
    assert _body(gzip.compress(b"[1, 2]"), {"content-encoding": "gzip"}) == b"[1, 2]"
    for broken in (b"not gzip at all", gzip.compress(b"[1, 2, 3, 4]")[:-12]):
        with pytest.raises(HTTPException) as err:
            _body(broken, {"content-encoding": "gzip"})
        assert err.value.status_code == 400
    monkeypatch.setenv(body_limit.ENV, "0")
    server_settings.cache_clear()
    assert len(_body(b"x" * 5000, {})) == 5000


def test_a_422_for_a_deeply_nested_body_stays_a_422() -> None:
    from fastapi import exception_handlers
    from fastapi.exceptions import RequestValidationError

    from mlserver_torchflow import validation_errors

    validation_errors.install()
    deep: Any = 1.0
    for _ in range(1020):  # orjson accepts up to 1024 levels; FastAPI's encoder recursed past its limit
        deep = [deep]
    error = {"type": "missing", "loc": ("body", "inputs", 0, "name"), "msg": "Field required", "input": deep}
    response = asyncio.run(
        exception_handlers.request_validation_exception_handler(None, RequestValidationError([error]))  # type: ignore[arg-type]
    )
    assert response.status_code == 422
    assert b"Field required" in response.body and b"inputs" in response.body


def test_a_huge_request_id_is_a_400_not_a_huge_response_header() -> None:
    request = req([1, 4], [0.0] * 4)
    request.id = "i" * 1024
    decode_request(request, SINGLE)
    request.id = "i" * 1025
    with pytest.raises(InvalidInput, match="1025 characters"):
        decode_request(request, SINGLE)


def test_a_422_for_non_utf8_bytes_stays_a_422() -> None:
    from fastapi import exception_handlers
    from fastapi.exceptions import RequestValidationError

    from mlserver_torchflow import validation_errors

    validation_errors.install()
    error = {
        "type": "model_attributes_type",
        "loc": ("body",),
        "msg": "Input should be a valid dictionary",
        "input": b"\x80",
    }
    response = asyncio.run(
        exception_handlers.request_validation_exception_handler(None, RequestValidationError([error]))  # type: ignore[arg-type]
    )
    assert response.status_code == 422 and b"valid dictionary" in response.body


def test_grpc_raw_contents_for_a_model_that_is_not_ours_are_a_400() -> None:
    """MLServer unpacks raw contents before the model lookup: a wrong size there was INTERNAL."""
    from mlserver.grpc import dataplane_pb2 as pb

    from mlserver_torchflow import grpc_raw

    request = pb.ModelInferRequest(model_name="not-a-torchflow-model", raw_input_contents=[b"\0" * 4])
    request.inputs.add(name="x", datatype="FP32", shape=[0, 4])
    with pytest.raises(InvalidInput, match="raw_input_contents do not match"):
        grpc_raw._convert(request)


@pytest.mark.parametrize("bad", ["\x1f", "id\n", "é", "日本"])
def test_a_request_id_that_cannot_be_a_header_is_a_400(bad: str) -> None:
    request = req([1, 4], [0.0] * 4)
    request.id = bad
    with pytest.raises(InvalidInput, match="printable ASCII"):
        decode_request(request, SINGLE)
    request.id = "0a908b7c-8ddd-4300-9c5c-bdd06b224242 ~!"
    decode_request(request, SINGLE)
