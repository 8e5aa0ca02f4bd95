"""The REST routes Triton's and KServe's clients expect with their defaults, mounted on MLServer's app.

- `infer` (both paths) replaced: JSON as before, plus Triton's binary tensor data both ways
  (`protocol.binary`). It keeps MLServer's behaviour: the body cap (`patches.body_limit`), request
  headers into `parameters.headers`, the data plane (its metrics, logs and errors), response headers
  from `parameters.headers`, and a 422 in FastAPI's format for a body that is not a V2 request.
- Health and model readiness answer `{"live": bool}` / `{"ready": bool}` with MLServer's status codes.
- `POST /v2/repository/index` takes an empty body, as tritonclient sends it.
- The repository and statistics routes answer 403 when restricted and called without the header
  (`patches.restricted`).
- Added: Triton's model configuration and statistics, per model and version, and for every model.

Each replaced route keeps its path, so MLServer's per-route metrics keep their labels. `infer` is also
reached by a lane through the same middleware without the router (`patches.fast_lane`).
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.exceptions import RequestValidationError
from mlserver.rest.app import APIRoute
from mlserver.rest.requests import Request
from mlserver.rest.responses import Response
from mlserver.rest.utils import to_status_code
from mlserver.types import InferenceRequest, RepositoryIndexRequest
from mlserver.utils import extract_headers, insert_headers
from pydantic import ValidationError
from starlette.responses import Response as RawResponse

from ..config import server_settings
from ..errors import NotTorchFlow
from ..patches import fast_lane, grpc_raw, restricted
from ..patches.frontends import Frontends
from ..protocol import binary


async def triton_call(frontends: Frontends, method: str, name: str, version: str | None) -> dict[str, Any]:
    """`triton_config` or `triton_stats` of one model, or a 404 naming what is missing."""
    model = await frontends.model(name, version or None)
    handler = getattr(model, method, None)
    if handler is None:
        raise NotTorchFlow(
            f"model {name!r} is not served by TorchFlowRuntime, so it has no Triton "
            f"{method.removeprefix('triton_')}; ask for a TorchFlowRuntime model."
        )
    return dict(await handler())


async def all_stats(frontends: Frontends) -> list[dict[str, Any]]:
    models = [m for m in await frontends.models() if hasattr(m, "triton_stats")]
    return [await m.triton_stats() for m in models]


def index_items(index: Any) -> list[dict[str, Any]]:
    """MLServer's repository index as plain dicts (it assigns `state` an enum member after validation)."""
    return [
        {
            "name": item.name,
            **({"version": item.version} if item.version else {}),
            "state": str(getattr(item.state, "value", item.state)),
            "reason": item.reason,
        }
        for item in index
    ]


def _validation_error(err: ValidationError) -> RequestValidationError:
    errors = [{**e, "loc": ("body", *e["loc"])} for e in err.errors(include_url=False)]
    return RequestValidationError(errors)


def _parse(body: bytes, declared: str | None) -> tuple[Any, dict[int, memoryview]]:
    """The request (JSON, or a binary framing's header) and the binary inputs' data by position."""
    if declared is not None:
        header, rest = binary.split_body(body, declared)
        return binary.attach(header, rest)
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as err:  # as FastAPI answers a body it cannot parse
        raise RequestValidationError(
            [{"type": "json_invalid", "loc": ("body", err.pos), "msg": "JSON decode error", "input": {}}]
        ) from err
    return parsed, {}  # anything but an object fails InferenceRequest's validation: a 422, as before


def _headers(request: Request) -> dict[str, str]:
    """`dict(request.headers)` in one pass (that looks every name up again): a repeated name's first value."""
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        headers.setdefault(name, value)
    return headers


def _adapt(payload: InferenceRequest, model: Any) -> None:
    """Binary data stays a view for a TorchFlow model in this process, becomes bytes for one in a worker
    (views do not pickle), and a flat list for another runtime's model."""
    ours_here = hasattr(model, "copies")
    ours = ours_here or grpc_raw.registered(model.name)
    for inp in payload.inputs:
        data = inp.data.root
        if not isinstance(data, memoryview) or ours_here:
            continue
        inp.data.root = bytes(data) if ours else binary.as_list(data, str(inp.datatype), inp.name)


# Triton's names for the extensions this runtime adds (or MLServer has), in the server metadata.
EXTENSIONS = ("binary_tensor_data", "model_configuration", "model_repository", "statistics")


def mount(frontends: Frontends) -> None:
    data_plane, repository = frontends.data_plane, frontends.repository
    frontends.declare_extensions(EXTENSIONS)

    async def infer(raw_request: Request, model_name: str, model_version: str | None = None) -> RawResponse:
        declared = raw_request.headers.get(binary.HEADER)
        request, chunks = _parse(await raw_request.body(), declared)
        default, chosen = binary.binary_outputs(request) if isinstance(request, dict) else (False, {})
        try:
            payload = InferenceRequest.model_validate(request)
        except ValidationError as err:
            raise _validation_error(err) from err
        if chunks:
            for index, chunk in chunks.items():
                payload.inputs[index].data.root = chunk
            _adapt(payload, await frontends.model(model_name, model_version))
        insert_headers(payload, _headers(raw_request))
        response = await data_plane.infer(payload, model_name, model_version)
        headers = extract_headers(response) or {}
        dumped = response.model_dump(by_alias=True, exclude_unset=True, exclude_none=True)
        content, header_size = binary.encode_response(dumped, default, chosen)
        if header_size is None:
            return RawResponse(content, headers=headers, media_type="application/json")
        headers["Inference-Header-Content-Length"] = str(header_size)
        return RawResponse(content, headers=headers, media_type=binary.BINARY_MEDIA_TYPE)

    async def lane_infer(scope: Any, receive: Any, send: Any) -> None:
        params = scope["path_params"]
        response = await infer(Request(scope, receive), params["model_name"], params.get("model_version"))
        await response(scope, receive, send)

    async def live() -> Response:
        is_live = await data_plane.live()
        return Response({"live": is_live}, status_code=to_status_code(is_live))

    async def ready() -> Response:
        is_ready = await frontends.ready()
        return Response({"ready": is_ready}, status_code=to_status_code(is_ready))

    async def model_ready(model_name: str, model_version: str | None = None) -> Response:
        is_ready = await frontends.model_ready(model_name, model_version)
        return Response({"name": model_name, "ready": is_ready}, status_code=to_status_code(is_ready))

    async def index(raw_request: Request) -> Response:
        restricted.check("model-repository", raw_request.headers)
        body = await raw_request.body()
        try:
            query = (
                RepositoryIndexRequest.model_validate_json(body) if body.strip() else RepositoryIndexRequest()
            )
        except ValidationError as err:
            raise _validation_error(err) from err
        return Response(index_items(await repository.index(query)))

    async def load(raw_request: Request, model_name: str) -> RawResponse:
        restricted.check("model-repository", raw_request.headers)
        return RawResponse(status_code=to_status_code(await repository.load(name=model_name)))

    async def unload(raw_request: Request, model_name: str) -> RawResponse:
        restricted.check("model-repository", raw_request.headers)
        return RawResponse(status_code=to_status_code(await repository.unload(name=model_name)))

    async def config(model_name: str, model_version: str | None = None) -> dict[str, Any]:
        return await triton_call(frontends, "triton_config", model_name, model_version)

    async def stats(
        raw_request: Request, model_name: str, model_version: str | None = None
    ) -> dict[str, Any]:
        restricted.check("statistics", raw_request.headers)
        return {"model_stats": [await triton_call(frontends, "triton_stats", model_name, model_version)]}

    async def every_stats(raw_request: Request) -> dict[str, Any]:
        restricted.check("statistics", raw_request.headers)
        return {"model_stats": await all_stats(frontends)}

    replaced = {
        ("POST", "/v2/models/{model_name}/infer"): infer,
        ("POST", "/v2/models/{model_name}/versions/{model_version}/infer"): infer,
        ("GET", "/v2/health/live"): live,
        ("GET", "/v2/health/ready"): ready,
        ("GET", "/v2/models/{model_name}/ready"): model_ready,
        ("GET", "/v2/models/{model_name}/versions/{model_version}/ready"): model_ready,
        ("POST", "/v2/repository/index"): index,
        ("POST", "/v2/repository/models/{model_name}/load"): load,
        ("POST", "/v2/repository/models/{model_name}/unload"): unload,
    }
    lane_routes = tuple(path for (_, path), endpoint in replaced.items() if endpoint is infer)
    routes = frontends.app.router.routes
    for i, route in enumerate(routes):
        for method in getattr(route, "methods", None) or ():
            endpoint = replaced.pop((method, getattr(route, "path", "")), None)
            if endpoint is not None:
                routes[i] = APIRoute(route.path, endpoint, methods=[method])
    if replaced:
        raise RuntimeError(f"MLServer's app lacks the routes {sorted(replaced)}: see patches/frontends.py")
    added = [
        ("/v2/models/stats", every_stats),  # before MLServer's /v2/models/{model_name}
        ("/v2/models/{model_name}/stats", stats),
        ("/v2/models/{model_name}/versions/{model_version}/stats", stats),
        ("/v2/models/{model_name}/config", config),
        ("/v2/models/{model_name}/versions/{model_version}/config", config),
    ]
    routes[:0] = [APIRoute(path, endpoint, methods=["GET"]) for path, endpoint in added]
    if server_settings().rest_fast_lane:
        fast_lane.attach(frontends.app, lane_routes, lane_infer)
