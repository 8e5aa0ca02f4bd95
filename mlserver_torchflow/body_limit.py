"""A cap on REST request bodies, which MLServer 1.7.1 does not have.

MLServer reads the whole body into memory, gunzips it when `Content-Encoding: gzip` (without a
bound: a 1 MiB gzip bomb becomes gigabytes), then parses it into Python lists before any runtime
runs; uvicorn and starlette have no body limit either. A per-request element limit is checked only
after all that, so it cannot protect the server's memory. This module replaces the `body()` of
MLServer's own `Request` class (every MLServer REST route reads its body through it) with one that
refuses, with a 413, a body whose `Content-Length`, streamed size or gunzipped size exceeds
`MLSERVER_TORCHFLOW_MAX_BODY_BYTES` (default 64 MiB; 0 turns the cap off).

The patch is installed when the package is imported, i.e. when MLServer imports the runtime class
in the main process (where the REST server runs), before the first request. It is the narrowest hook
MLServer offers: `create_app` takes no middleware, and `_custom_rest_server_settings` is a private
attribute that settings.json cannot set. The real cap still belongs to the ingress (Istio/Envoy,
nginx `client_max_body_size`), which refuses a large body before it reaches the pod.
"""

from __future__ import annotations

import zlib
from typing import Any

from fastapi import HTTPException
from mlserver.rest import requests as mlserver_requests

from .settings import server_settings

ENV = "MLSERVER_TORCHFLOW_MAX_BODY_BYTES"


def max_body_bytes() -> int:
    return max(server_settings().max_body_bytes, 0)


def _too_large(what: str, cap: int) -> HTTPException:
    return HTTPException(
        status_code=413,
        detail=(
            f"the request body {what} is larger than this server's limit of {cap} bytes ({ENV}). "
            "Send fewer rows per request, or use gRPC raw tensors."
        ),
    )


def _gunzip(body: bytes, cap: int) -> bytes:
    inflater = zlib.decompressobj(wbits=31)  # gzip header and trailer
    try:
        out = inflater.decompress(body, cap + 1 if cap else 0)
    except zlib.error as err:
        raise HTTPException(status_code=400, detail=f"the gzip request body is corrupt ({err}).") from err
    if cap and (len(out) > cap or inflater.unconsumed_tail):
        raise _too_large("once gunzipped", cap)
    if not inflater.eof:
        raise HTTPException(status_code=400, detail="the gzip request body is truncated.")
    return out


async def _body(self: Any) -> bytes:
    if not hasattr(self, "_body"):
        cap = max_body_bytes()
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
    """Idempotent; replaces MLServer's own `Request.body` (which gunzips without a bound)."""
    cls = mlserver_requests.Request
    if not getattr(cls, "_torchflow_body_cap", False):
        cls.body = _body  # type: ignore[method-assign]
        cls._torchflow_body_cap = True  # type: ignore[attr-defined]
