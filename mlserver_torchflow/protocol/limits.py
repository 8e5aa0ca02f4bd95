"""Per-request size limits, decided from the declared shapes before any data is converted.

`max_request_rows` and `max_request_elements` (model settings, `parameters.extra` or
`MLSERVER_MODEL_TORCHFLOW_*`) bound one request; over a limit the client gets a 413
(`RESOURCE_EXHAUSTED` over gRPC) naming the input, the limit and the setting. 0 turns a limit off.

The runtime builds its limits once, from its settings (`config.RequestLimits`), and passes them to
the codec, which checks the rank and the integer dimensions before it calls `check_shape_size`.
"""

from __future__ import annotations

import math

from ..common import clip
from ..config import RequestLimits
from ..errors import InvalidInput, RequestTooLarge

MAX_RANK = 32  # numpy's own ceiling is 64; no model here takes more than a handful of dimensions
MAX_ID_CHARS = 1024  # the V2 request id, echoed by MLServer in response headers
MAX_DIM = 2**62  # any dimension above this cannot be allocated and overflows numpy's int64 sizes


def check_shape_size(name: str, shape: tuple[int, ...], limits: RequestLimits) -> int:
    """The element count of `shape`, refused (413) over a limit before anything is allocated.

    Zero-size tensors are a 400: there is nothing to compute, and models fail on them in odd ways.
    """
    if any(d > MAX_DIM for d in shape):
        raise RequestTooLarge(
            f"input {name}: shape {clip(str(list(shape)))} has a dimension above {MAX_DIM}; no server can hold "
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
            f"input {name}: shape {clip(str(list(shape)))} holds {count} values, more than this model's limit "
            f"of {limits.max_elements} per request (setting max_request_elements). Split the request "
            "into smaller ones, or raise max_request_elements in parameters.extra / "
            "MLSERVER_MODEL_TORCHFLOW_MAX_REQUEST_ELEMENTS."
        )
    if count == 0:
        raise InvalidInput(
            f"input {name}: shape {clip(str(list(shape)))} holds no values; send at least one row of data."
        )
    return count
