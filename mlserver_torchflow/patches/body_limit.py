"""A cap on REST request bodies, which MLServer 1.7.1 does not have.

MLServer reads the whole body into memory, gunzips it when `Content-Encoding: gzip` (without a
bound: a 1 MiB gzip bomb becomes gigabytes), then parses it into Python lists before any runtime
runs; uvicorn and starlette have no body limit either. A per-request element limit is checked only
after all that, so it cannot protect the server's memory. This module replaces the `body()` of
MLServer's own `Request` class (every MLServer REST route reads its body through it) with one that
refuses, with a 413, a body whose `Content-Length`, streamed size or gunzipped size exceeds
`MLSERVER_TORCHFLOW_MAX_BODY_BYTES` (default 64 MiB; 0 turns the cap off).

The refusals answer `{"error": ...}` like every other error: they are `BodyTooLarge` / `BadRequest`
that are also FastAPI `HTTPException`s, because FastAPI turns any other exception raised while it
reads the body into a bare 400 ("There was an error parsing the body") and re-raises only those.
Starlette then picks the handler by the exception's MRO: our error class comes first in it, so
MLServer's `MLServerError` handler answers, not FastAPI's `{"detail": ...}` one.

It is the narrowest hook MLServer offers: `create_app` takes no middleware, and
`_custom_rest_server_settings` is a private attribute that settings.json cannot set. The real cap
still belongs to the ingress (Istio/Envoy, nginx `client_max_body_size`), which refuses a large body
before it reaches the pod.
"""

from __future__ import annotations

import zlib
from typing import Any

from fastapi import HTTPException
from mlserver.rest import requests as mlserver_requests

from ..config import SERVER_ENV_PREFIX, server_settings
from ..errors import BadRequest, BodyTooLarge
from .targets import Patch, Target

ENV = f"{SERVER_ENV_PREFIX}MAX_BODY_BYTES"


class _Refusal(HTTPException):
    """Mixed in after our error class, so that FastAPI lets it through to MLServer's error handler.

    Reached from `MLServerError.__init__`'s `super().__init__(msg)`: HTTPException's own `__init__`
    would take the message for a status code, so only the attributes its handlers read are set.
    """

    def __init__(self, msg: str) -> None:
        Exception.__init__(self, msg)
        self.detail, self.headers = msg, None

    def __str__(self) -> str:
        return str(self.detail)


class BodyRefused(BadRequest, _Refusal):
    """A gzip body that is corrupt or truncated (400)."""


class BodyCapped(BodyTooLarge, _Refusal):
    """A body over the cap (413)."""


def _too_large(what: str, cap: int) -> BodyCapped:
    return BodyCapped(
        f"the request body {what} is larger than this server's limit of {cap} bytes ({ENV}). "
        "Send fewer rows per request, or use gRPC raw tensors."
    )


def _gunzip(body: bytes, cap: int) -> bytes:
    inflater = zlib.decompressobj(wbits=31)  # gzip header and trailer
    try:
        out = inflater.decompress(body, cap + 1 if cap else 0)
    except zlib.error as err:
        raise BodyRefused(f"the gzip request body is corrupt ({err}); send it again.") from err
    if cap and (len(out) > cap or inflater.unconsumed_tail):
        raise _too_large("once gunzipped", cap)
    if not inflater.eof:
        raise BodyRefused("the gzip request body is truncated; send the whole body.")
    return out


async def _body(self: Any) -> bytes:
    if not hasattr(self, "_body"):
        cap = server_settings().max_body_bytes
        declared = self.headers.get("content-length", "")
        if cap and declared.isdigit() and int(declared) > cap:
            raise _too_large(f"({declared} bytes declared)", cap)
        chunks: list[bytes] = []
        size = 0
        async for chunk in self.stream():
            size += len(chunk)
            if cap and size > cap:
                raise _too_large("(streamed)", cap)
            chunks.append(chunk)
        body = b"".join(chunks)
        if "gzip" in self.headers.getlist("Content-Encoding"):
            body = _gunzip(body, cap)
        self._body = body
    return bytes(self._body)


def install() -> None:
    mlserver_requests.Request.body = _body  # type: ignore[method-assign]


PATCH = Patch(
    name="body_limit",
    why="cap REST bodies (declared, streamed, gunzipped) before MLServer reads and parses them",
    targets=(
        Target("mlserver.rest.requests:Request.body", "mlserver", ("1.7.1",), "301ae7f79bd9"),
        Target("fastapi.routing:get_request_handler", "fastapi", ("0.115.14",), "66ad8c1c0cc3"),
        Target(
            "starlette._exception_handler:_lookup_exception_handler", "starlette", ("0.46.2",), "14e3da74ab6e"
        ),
    ),
    install=install,
)
