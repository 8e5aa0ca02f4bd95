"""Per-request size limits, decided from the declared shapes before any data is converted.

`max_request_rows` and `max_request_elements` (model settings, `parameters.extra` or
`MLSERVER_MODEL_TORCHFLOW_*`) bound one request; over a limit the client gets a 413
(`RESOURCE_EXHAUSTED` over gRPC) naming the input, the limit and the setting. 0 turns a limit off.

The runtime builds its limits once, from its settings, and passes them to the codec.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import InvalidInput, RequestTooLarge

DEFAULT_MAX_ROWS = 65_536
DEFAULT_MAX_ELEMENTS = 16 * 1024 * 1024  # 64 MiB of FP32: matches the 64 MiB body / message caps
MAX_RANK = 32  # numpy's own ceiling is 64; no model here takes more than a handful of dimensions
MAX_ID_CHARS = 1024  # the V2 request id, echoed by MLServer in response headers
MAX_DIM = 2**62  # any dimension above this cannot be allocated and overflows numpy's int64 sizes


@dataclass(frozen=True)
class RequestLimits:
    max_rows: int = DEFAULT_MAX_ROWS
    max_elements: int = DEFAULT_MAX_ELEMENTS


DEFAULTS = RequestLimits()


def check_shape_size(name: str, shape: tuple[int, ...], limits: RequestLimits) -> int:
    """The element count of `shape`, refused (413) over a limit before anything is allocated.

    Zero-size tensors are a 400: there is nothing to compute, and models fail on them in odd ways.
    """
    if len(shape) > MAX_RANK:
        raise InvalidInput(
            f"input {name}: shape has {len(shape)} dimensions; at most {MAX_RANK} are supported."
        )
    if any(d > MAX_DIM for d in shape):
        raise RequestTooLarge(
            f"input {name}: shape {_short(shape)} has a dimension above {MAX_DIM}; no server can hold "
            "it. Check the shape the client sends."
        )
    count = math.prod(shape)
    rows = shape[0] if shape else 1
    if limits.max_rows and rows > limits.max_rows:
        raise RequestTooLarge(
            f"input {name}: {rows} rows is more than this model's limit of {limits.max_rows} rows per "
            "request (setting max_request_rows). Split the request into smaller ones, or raise "
            "max_request_rows in parameters.extra / MLSERVER_MODEL_TORCHFLOW_MAX_REQUEST_ROWS."
        )
    if limits.max_elements and count > limits.max_elements:
        raise RequestTooLarge(
            f"input {name}: shape {_short(shape)} holds {count} values, more than this model's limit "
            f"of {limits.max_elements} per request (setting max_request_elements). Split the request "
            "into smaller ones, or raise max_request_elements in parameters.extra / "
            "MLSERVER_MODEL_TORCHFLOW_MAX_REQUEST_ELEMENTS."
        )
    if count == 0:
        raise InvalidInput(
            f"input {name}: shape {_short(shape)} holds no values; send at least one row of data."
        )
    return count


def _short(shape: tuple[int, ...]) -> str:
    text = str(list(shape))
    return text if len(text) <= 120 else text[:117] + "..."
