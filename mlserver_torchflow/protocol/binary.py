"""Triton's binary tensor data extension for REST: a JSON header, then each tensor's raw bytes.

A request carries `Inference-Header-Content-Length: <n>`: the first n bytes of the body are the V2
JSON request, in which an input without `data` has `parameters.binary_data_size` and its values
follow the header, in input order, little-endian, row-major (BYTES: each element a 4-byte length and
its bytes). Every size is checked against the header, the body and the input's shape before a value
is converted, so a lying client gets a 400 naming the input, never an allocation from its numbers.

A response carries the same framing when the client asks: per requested output
`parameters.binary_data`, or `binary_data_output` in the request parameters (tritonclient sets it when
it names no outputs). Otherwise the answer is JSON, as before. Spec: triton-inference-server/server
`docs/protocol/extension_binary_data.md`.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import orjson

from ..common import clip, quote
from ..errors import BadRequest, InvalidInput
from .signature import V2_TO_NUMPY

HEADER = "inference-header-content-length"
BINARY_MEDIA_TYPE = "application/octet-stream"
_LENGTH = struct.Struct("<I")


def split_body(body: bytes, declared: str) -> tuple[dict[str, Any], memoryview]:
    """The JSON header (parsed) and the binary part of a body framed by `Inference-Header-Content-Length`."""
    if not declared.isdigit():
        raise BadRequest(
            f"the Inference-Header-Content-Length header is {quote(declared)}; send the JSON header's "
            "length in bytes as a non-negative integer."
        )
    size = int(declared)
    if size > len(body):
        raise BadRequest(
            f"Inference-Header-Content-Length is {size} bytes, but the body has only {len(body)}; send "
            "the JSON header's own length."
        )
    try:
        header = orjson.loads(memoryview(body)[:size])
    except orjson.JSONDecodeError as err:
        raise BadRequest(
            f"the first {size} bytes of the body (Inference-Header-Content-Length) are not a JSON "
            f"object ({clip(str(err))}); check that the header's length is the JSON's length in bytes."
        ) from err
    if not isinstance(header, dict):
        raise BadRequest(f"the request's JSON header is a {type(header).__name__}; send a JSON object.")
    return header, memoryview(body)[size:]


def attach(header: dict[str, Any], binary: memoryview) -> tuple[dict[str, Any], dict[int, memoryview]]:
    """Each input's slice of `binary`, by its position in `inputs`, sizes checked in order against its
    shape and what remains of the body; the slices are views (no copy).

    The header comes back with an empty `data` in each binary input, to validate as an `InferenceRequest`
    before the slices go in: pydantic tries MLServer's `TensorData` as a list first and would walk a view
    byte by byte (20 ms for one 3x224x224 image).
    """
    inputs = header.get("inputs")
    chunks: dict[int, memoryview] = {}
    if not isinstance(inputs, list):
        return header, chunks  # pydantic's validation names what is missing
    offset = 0
    for index, inp in enumerate(inputs):
        size = _declared_size(inp)
        if size is None:
            continue
        name = quote(inp.get("name"))
        if "data" in inp:
            raise InvalidInput(
                f"input {name} has both data and parameters.binary_data_size; send its values one way."
            )
        if offset + size > len(binary):
            raise InvalidInput(
                f"input {name}: binary_data_size is {size} bytes, but only {len(binary) - offset} bytes "
                "of binary data remain after the inputs before it; check the sizes and the input order."
            )
        chunk = binary[offset : offset + size]
        _check_size(inp, name, chunk)
        inp["data"] = []
        chunks[index] = chunk
        offset += size
    if offset != len(binary):
        raise InvalidInput(
            f"the body holds {len(binary)} bytes after the JSON header, but the inputs' "
            f"binary_data_size add up to {offset}; send exactly the declared bytes."
        )
    return header, chunks


def _declared_size(inp: Any) -> int | None:
    params = inp.get("parameters") if isinstance(inp, dict) else None
    if not isinstance(params, dict) or "binary_data_size" not in params:
        return None
    size = params["binary_data_size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidInput(
            f"input {quote(inp.get('name'))}: parameters.binary_data_size is {clip(repr(size))}; send the "
            "byte count of the input's data as a non-negative integer."
        )
    return size


def _check_size(inp: dict[str, Any], name: str, chunk: memoryview) -> None:
    shape, datatype = inp.get("shape"), inp.get("datatype")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise InvalidInput(
            f"input {name}: shape must be a list of non-negative integers, got {clip(repr(shape))}."
        )
    count = math.prod(shape)
    dtype = V2_TO_NUMPY.get(str(datatype))
    if dtype is not None:
        if len(chunk) != count * dtype.itemsize:
            raise InvalidInput(
                f"input {name}: shape {clip(str(shape))} holds {count} {datatype} values "
                f"({count * dtype.itemsize} bytes), but binary_data_size is {len(chunk)}."
            )
    elif datatype == "BYTES":
        found = len(bytes_elements(chunk, name, count))
        if found != count:
            raise InvalidInput(
                f"input {name}: shape {clip(str(shape))} holds {count} BYTES elements, got {found}."
            )
    else:
        raise InvalidInput(
            f"input {name}: datatype {quote(datatype)} cannot be sent as binary data; use one of "
            f"{', '.join([*V2_TO_NUMPY, 'BYTES'])}."
        )


def bytes_elements(chunk: memoryview, name: str, limit: int) -> list[bytes]:
    """BYTES elements: each a little-endian uint32 length, then that many bytes."""
    out: list[bytes] = []
    at = 0
    while at < len(chunk):
        if len(out) >= limit or at + 4 > len(chunk):
            raise InvalidInput(f"input {name}: the BYTES data does not end on an element boundary.")
        (length,) = _LENGTH.unpack_from(chunk, at)
        if at + 4 + length > len(chunk):
            raise InvalidInput(
                f"input {name}: a BYTES element claims {length} bytes past the end of its data."
            )
        out.append(bytes(chunk[at + 4 : at + 4 + length]))
        at += 4 + length
    return out


def as_list(data: memoryview, datatype: str, name: str) -> list[Any]:
    """Binary data as the flat list another runtime expects (the TorchFlow runtime decodes bytes itself)."""
    dtype = V2_TO_NUMPY.get(datatype)
    if dtype is None:
        return list(bytes_elements(data, quote(name), len(data)))
    return np.frombuffer(data, dtype=dtype.newbyteorder("<")).tolist()


def binary_outputs(request: Mapping[str, Any]) -> tuple[bool, dict[str, bool]]:
    """The request-wide default (`binary_data_output`) and the per-output choices (`binary_data`)."""
    params = request.get("parameters") or {}
    default = bool(params.get("binary_data_output", False)) if isinstance(params, dict) else False
    chosen: dict[str, bool] = {}
    for out in request.get("outputs") or ():
        out_params = out.get("parameters") if isinstance(out, dict) else None
        if isinstance(out_params, dict) and "binary_data" in out_params:
            chosen[str(out.get("name"))] = bool(out_params["binary_data"])
    return default, chosen


def encode_response(
    response: dict[str, Any], default: bool, chosen: Mapping[str, bool]
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when any output went binary (else None)."""
    buffers: list[bytes] = []
    for out in response.get("outputs") or ():
        if not chosen.get(str(out.get("name")), default):
            continue
        raw = _to_bytes(out.pop("data", []), str(out.get("datatype")))
        params = out.get("parameters") or {}
        out["parameters"] = {**params, "binary_data_size": len(raw)}
        buffers.append(raw)
    header = orjson.dumps(response, default=_text)
    if not buffers:
        return header, None
    return b"".join([header, *buffers]), len(header)


def _to_bytes(data: Any, datatype: str) -> bytes:
    values = data.get("root", data) if isinstance(data, dict) else data
    dtype = V2_TO_NUMPY.get(datatype)
    if dtype is not None:
        return np.asarray(values, dtype=dtype.newbyteorder("<")).tobytes()
    return b"".join(_LENGTH.pack(len(v)) + v for v in _as_bytes(values))


def _as_bytes(values: Iterable[Any]) -> Iterable[bytes]:
    for v in values:
        yield v if isinstance(v, bytes) else str(v).encode()


def _text(value: Any) -> Any:
    if isinstance(value, bytes | memoryview):
        return bytes(value).decode(errors="replace")
    raise TypeError
