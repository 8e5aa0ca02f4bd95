"""Keep MLServer's 422 a 422 when the echoed input cannot be encoded (deep nesting, non-UTF-8 bytes).

MLServer validates every REST request with pydantic before any runtime runs; FastAPI's default handler
then answers 422 with `jsonable_encoder(exc.errors())`, and each error carries the offending `input`.
`jsonable_encoder` recurses in Python: an input nested ~1000 levels deep (orjson parses up to 1024,
e.g. `"inputs": [[[[...]]]]` or a deep `data` in an input without a `name`) raises RecursionError
inside the error handler, and the client gets a bare 500. So does a body that is not UTF-8 sent
with a non-JSON `Content-Type` (FastAPI passes the raw bytes to pydantic, and the encoder decodes them
as UTF-8: UnicodeDecodeError).

MLServer creates its FastAPI app before it imports any runtime, so the handler cannot be replaced
from here; but the handler looks `jsonable_encoder` up in its module at call time. This swaps that
one name (in `fastapi.exception_handlers` only) for a wrapper that, when encoding fails, drops the
echoed inputs and keeps the rest of each error (type, location, message): still a 422 that says what
is wrong.
"""

from __future__ import annotations

from typing import Any

from fastapi import exception_handlers

from .targets import Patch, Target

_original = exception_handlers.jsonable_encoder


def _encode(obj: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return _original(obj, *args, **kwargs)
    except (RecursionError, UnicodeDecodeError, ValueError, TypeError):
        if isinstance(obj, list | tuple):
            obj = [
                {k: v for k, v in e.items() if k != "input"} if isinstance(e, dict) else str(e)[:200]
                for e in obj
            ]
        return _original(obj, *args, **kwargs)


def install() -> None:
    exception_handlers.jsonable_encoder = _encode  # type: ignore[assignment]


PATCH = Patch(
    name="validation_errors",
    why="a 422 whose echoed input cannot be encoded (deep nesting, non-UTF-8) stays a 422, not a 500",
    targets=(
        Target(
            "fastapi.exception_handlers:request_validation_exception_handler",
            "fastapi",
            ("0.115.14",),
            "7603a044eb22",
        ),
    ),
    install=install,
)
