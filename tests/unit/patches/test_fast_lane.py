"""Which of MLServer's apps get the REST lane, and what the lane records for an error nobody handles.

The apps are MLServer's own (`create_app` with real settings); requests are driven through the ASGI
interface directly. tests/integration/test_fast_lane.py compares the lane with the full path behind a
real server."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import pytest
from mlserver.handlers import DataPlane, ModelRepositoryHandlers
from mlserver.registry import MultiModelRegistry
from mlserver.rest.app import create_app
from mlserver.settings import CORSSettings, Settings
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from prometheus_client import REGISTRY

from mlserver_torchflow.patches import fast_lane

ROUTES = ("/v2/models/{model_name}/infer",)


@functools.cache
def handlers() -> tuple[DataPlane, ModelRepositoryHandlers]:
    """One data plane per process: it registers MLServer's metrics once."""
    registry = MultiModelRegistry()
    return DataPlane(Settings(), registry), ModelRepositoryHandlers(None, registry)  # type: ignore[arg-type]


def mlserver_app(**settings: Any) -> Any:
    config = Settings(**{"debug": False, **settings})  # as deployed (docs/operations.md)
    return create_app(config, *handlers())


def call(app: Any, path: str, method: str = "POST") -> tuple[list[dict[str, Any]], BaseException | None]:
    scope = {
        "type": "http", "method": method, "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": b"", "headers": [], "http_version": "1.1", "scheme": "http",
        "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1), "app": app,
    }  # fmt: skip
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    try:
        asyncio.run(app.middleware_stack(scope, receive, send))
    except Exception as err:
        return sent, err
    return sent, None


def count(path: str, status: str) -> float:
    labels = {"method": "POST", "path": path, "status_code": status, "app_name": "mlserver"}
    return REGISTRY.get_sample_value("rest_server_requests_total", labels) or 0.0


async def broken(scope: Any, receive: Any, send: Any) -> None:
    raise RuntimeError("a bug in the endpoint")


def test_mlservers_default_app_gets_the_lane_and_an_unhandled_error_is_a_counted_500() -> None:
    app = mlserver_app()
    assert fast_lane.attach(app, ROUTES, broken) is True
    before = count("/v2/models/{model_name}/infer", "500")
    sent, err = call(app, "/v2/models/m/infer")
    assert isinstance(err, RuntimeError)  # re-raised to uvicorn, which logs it, as MLServer's path does
    assert sent[0]["status"] == 500 and sent[1]["body"] == b"Internal Server Error"  # no traceback
    assert count("/v2/models/{model_name}/infer", "500") == before + 1


def test_other_requests_take_the_full_stack() -> None:
    app = mlserver_app()
    fast_lane.attach(app, ROUTES, broken)
    sent, err = call(app, "/v2/health/live", method="GET")
    assert err is None and sent[0]["status"] == 200  # MLServer's route, not the broken endpoint
    sent, err = call(app, "/v2/models/m/infer", method="GET")
    assert err is None and sent[0]["status"] == 405


@pytest.mark.parametrize(
    "settings",
    [
        {"cors_settings": CORSSettings(allow_origins=["*"])},  # CORS headers: only the full stack adds them
    ],
)
def test_apps_with_middleware_the_lane_lacks_keep_their_stack(settings: dict[str, Any]) -> None:
    app = mlserver_app(**settings)
    assert fast_lane.build(app, broken) is None
    assert fast_lane.attach(app, ROUTES, broken) is False
    assert app.middleware_stack is None  # Starlette builds its own on the first request


def test_an_app_traced_by_opentelemetry_keeps_its_stack() -> None:
    """MLServer's `tracing_server` instruments the app as here: by wrapping its build_middleware_stack."""
    plain, traced = mlserver_app(), mlserver_app()
    FastAPIInstrumentor.instrument_app(traced)
    assert fast_lane.build(plain, broken) is not None
    assert fast_lane.attach(traced, ROUTES, broken) is False
    FastAPIInstrumentor.uninstrument_app(traced)


def test_an_app_without_metrics_or_gzip_gets_a_lane_without_them() -> None:
    app = mlserver_app(metrics_endpoint=None, gzip_enabled=False)
    lane = fast_lane.build(app, broken)
    layers = []
    while lane is not None:
        layers.append(type(lane).__name__)
        lane = getattr(lane, "app", None)
    assert layers == ["ServerErrorMiddleware", "ExceptionMiddleware", "function"]


def test_prometheus_options_other_than_mlservers_turn_the_lane_off() -> None:
    app = mlserver_app()
    (entry,) = [m for m in app.user_middleware if m.cls.__name__ == "PrometheusMiddleware"]
    entry.kwargs["labels"] = {"team": "a"}
    assert fast_lane.build(app, broken) is None
