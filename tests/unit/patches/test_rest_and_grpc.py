"""The REST and gRPC patches at work: the body cap, 422s that stay 422s, raw gRPC contents."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import HTTPException
from fastapi.exception_handlers import http_exception_handler
from mlserver.rest.errors import _EXCEPTION_HANDLERS, handle_mlserver_error
from mlserver.rest.requests import Request
from starlette._exception_handler import _lookup_exception_handler
from starlette.exceptions import HTTPException as StarletteHTTPException

from mlserver_torchflow import patches
from mlserver_torchflow.config import server_settings
from mlserver_torchflow.errors import BadRequest, BodyTooLarge, InvalidInput
from mlserver_torchflow.patches import body_limit


def answered_by(err: Exception) -> object:
    """The handler Starlette picks for `err` among MLServer's and FastAPI's own, as in the server."""
    handlers = {**_EXCEPTION_HANDLERS, StarletteHTTPException: http_exception_handler}
    return _lookup_exception_handler(handlers, err)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _fresh_server_settings() -> Iterator[None]:
    """Tests change the body cap's env var; no cached value may outlive them."""
    server_settings.cache_clear()
    yield
    server_settings.cache_clear()


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
        # Also our own error, so MLServer's handler answers it as {"error": ...} (not {"detail": ...}).
        assert isinstance(err.value, BodyTooLarge) and str(err.value).startswith("the request body")
        assert answered_by(err.value) is handle_mlserver_error
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
        assert err.value.status_code == 400 and isinstance(err.value, BadRequest)
        assert answered_by(err.value) is handle_mlserver_error
    monkeypatch.setenv(body_limit.ENV, "0")
    server_settings.cache_clear()
    assert len(_body(b"x" * 5000, {})) == 5000


def test_a_422_for_a_deeply_nested_body_stays_a_422() -> None:
    from fastapi import exception_handlers
    from fastapi.exceptions import RequestValidationError

    from mlserver_torchflow.patches import validation_errors

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


def test_a_422_for_non_utf8_bytes_stays_a_422() -> None:
    from fastapi import exception_handlers
    from fastapi.exceptions import RequestValidationError

    from mlserver_torchflow.patches import validation_errors

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
    from mlserver.grpc.converters import ModelInferRequestConverter

    patches.install()
    request = pb.ModelInferRequest(model_name="not-a-torchflow-model", raw_input_contents=[b"\0" * 4])
    request.inputs.add(name="x", datatype="FP32", shape=[0, 4])
    with pytest.raises(InvalidInput, match="raw_input_contents do not match"):
        ModelInferRequestConverter.to_types(request)


def test_triton_parameter_kinds_that_mlservers_protobuf_lacks_are_read() -> None:
    """tritonclient sends `priority` as `uint64_param` (field 5), which MLServer 1.7.1's InferParameter
    lacks: without this the priority vanished silently."""
    import struct

    from mlserver.grpc import dataplane_pb2 as pb

    from mlserver_torchflow.patches import grpc_raw

    request = pb.ModelInferRequest(model_name="m")
    request.parameters["priority"].MergeFromString(bytes([5 << 3 | 0, 2]))  # uint64_param = 2
    request.parameters["ratio"].MergeFromString(bytes([4 << 3 | 1]) + struct.pack("<d", 0.5))
    request.parameters["timeout"].int64_param = 1000
    parameters = grpc_raw.parameters(request.parameters)
    assert parameters is not None
    assert (parameters.priority, parameters.ratio, parameters.timeout) == (2, 0.5, 1000)
    assert grpc_raw.parameters(pb.ModelInferRequest().parameters) is None
