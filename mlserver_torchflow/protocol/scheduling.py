"""Triton's scheduling parameters of a request: `priority` and `timeout` (microseconds).

tritonclient sends them as request-level parameters (`infer(..., priority=, timeout=)`): over REST
in the JSON `parameters`, over gRPC as `uint64_param` / `int64_param`, which MLServer turns into
plain ints. Anything but a non-negative integer is the client's mistake: a 400 naming the parameter.
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidInput

MAX_TIMEOUT_US = 2**63 - 1  # int64, as Triton's protocol carries it


def scheduling(parameters: Any) -> tuple[int, int | None]:
    """(priority, timeout in microseconds or None) from a V2 request's parameters (0 / None: unset)."""
    if parameters is None:
        return 0, None
    extra = getattr(parameters, "model_extra", None) or {}
    priority = _integer(extra.get("priority"), "priority", 2**64 - 1)
    timeout = _integer(extra.get("timeout"), "timeout", MAX_TIMEOUT_US)
    return priority or 0, timeout


def _integer(value: Any, name: str, largest: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= largest:
        unit = " (microseconds)" if name == "timeout" else ""
        raise InvalidInput(
            f"request parameter {name!r} must be a non-negative integer{unit}, got {value!r}; "
            "see docs/batching.md for the queue policy."
        )
    return value
