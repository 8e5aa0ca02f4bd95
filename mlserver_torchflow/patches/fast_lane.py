"""A short path for `POST .../infer` through MLServer's REST app, with the same middleware around it.

MLServer's app sends every request through Starlette's middleware (errors, Prometheus, gzip, exception
handlers), then a router that tries ~30 routes in turn, then FastAPI's route machinery (its request
wrapper, dependency solving, MLServer's Request re-wrap), and starlette_exporter matches the routes a
second time to label its metrics. For a 1-row inference that is most of the server's own time per
request: on 2 cores the batched MLP at 32 clients spent 0.50 ms of event loop per request, 0.32 ms
without it (docs/operations.md).

The lane is the app's own middleware stack, built by `Starlette.build_middleware_stack`, around the
infer endpoint instead of the router: MLServer's `ServerErrorMiddleware`, gzip (the same
`GZipMiddleware`, so the same Content-Encoding, Content-Length and Vary), its exception handlers (the
same `ExceptionMiddleware`: `{"error"}` for MLServer's errors, FastAPI's 422), and, in place of
starlette_exporter's middleware, `Recorder`: the same three metrics with the same names and labels
(the route template as `path`), their children looked up once. Every other request takes the full
stack. An app with middleware the lane does not reproduce (CORS, tracing, Prometheus options other
than MLServer's, a stack built other than by Starlette) gets no lane.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

from starlette._utils import get_route_path
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request as StarletteRequest
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette_exporter import PrometheusMiddleware

from ..common import logger
from .targets import Patch, Target

# The options MLServer 1.7.1's create_app gives starlette_exporter; any other one turns the lane off.
RECORDER_OPTIONS = frozenset({"app_name", "prefix", "skip_paths", "buckets", "group_paths"})


class Recorder:
    """starlette_exporter's request metrics for the lane's routes: requests in progress, requests by
    status, and the time to the first body message (an unhandled error counts as 500 and is re-raised,
    a request answered with nothing counts 499 if the client left, else 500)."""

    def __init__(self, app: ASGIApp, /, **options: Any) -> None:
        self.app = app
        self.exporter = PrometheusMiddleware(app, **options)  # creates, or finds, the shared metrics
        self.in_progress: dict[str, Any] = {}
        self.children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def _children(self, method: str, path: str, status: int) -> tuple[Any, Any]:
        key = (method, path, status)
        found = self.children.get(key)
        if found is None:
            labels = (method, path, status, self.exporter.app_name)
            found = self.exporter.request_count.labels(*labels), self.exporter.request_time.labels(*labels)
            self.children[key] = found
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method, path = scope["method"], scope["lane.template"]
        if any(p.fullmatch(get_route_path(scope)) for p in self.exporter.skip_paths):
            await self.app(scope, receive, send)
            return
        begin = time.perf_counter()
        gauge = self.in_progress.get(method)
        if gauge is None:
            gauge = self.in_progress[method] = self.exporter.requests_in_progress.labels(
                method, self.exporter.app_name
            )
        gauge.inc()
        status: int | None = None
        end: float | None = None

        async def recorded(message: Message) -> None:
            nonlocal status, end
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and end is None:
                end = time.perf_counter()
            await send(message)

        failure: Exception | None = None
        try:
            await self.app(scope, receive, recorded)
        except Exception as err:
            status, failure = 500, err
        finally:
            gauge.dec()
        if status is None:
            status = 499 if await StarletteRequest(scope, receive).is_disconnected() else 500
        count, timing = self._children(method, path, status)
        count.inc()
        timing.observe((end or time.perf_counter()) - begin)
        if failure is not None:
            raise failure


Endpoint = Callable[[Scope, Receive, Send], Awaitable[None]]


def _lane_middleware(app: Any) -> list[Middleware] | None:
    """The app's middleware as the lane runs it, or None when it has one the lane does not reproduce.
    OpenTelemetry's FastAPI instrumentation (MLServer's tracing) wraps the app's `build_middleware_stack`
    instead of adding middleware: a stack built any other way than Starlette's gets no lane."""
    if "build_middleware_stack" in vars(app):
        return None
    lane = []
    for entry in app.user_middleware:
        if entry.cls is GZipMiddleware:
            lane.append(entry)
        elif entry.cls is PrometheusMiddleware and not entry.args and set(entry.kwargs) <= RECORDER_OPTIONS:
            if entry.kwargs.get("group_paths", True) is False:
                return None
            lane.append(Middleware(Recorder, **entry.kwargs))
        else:
            return None
    return lane


def build(app: Any, endpoint: Endpoint) -> ASGIApp | None:
    """The app's middleware stack around `endpoint`, built by `Starlette.build_middleware_stack` itself
    from the app's settings with the lane's middleware and `endpoint` in the router's place; None where
    the lane would not behave as the full stack does."""
    middle = _lane_middleware(app)
    if middle is None:
        return None
    lane = SimpleNamespace(
        debug=app.debug, exception_handlers=app.exception_handlers, user_middleware=middle, router=endpoint
    )
    return Starlette.build_middleware_stack(lane)  # type: ignore[arg-type]


def attach(app: Any, templates: tuple[str, ...], endpoint: Endpoint) -> bool:
    """Send `POST` requests whose path matches one of the route `templates` (compiled as Starlette's
    router compiles them) through the lane; the rest through the app's full stack. False: the app keeps
    its stack."""
    lane = build(app, endpoint)
    if lane is None:
        names = [entry.cls.__name__ for entry in app.user_middleware]
        logger.info("REST inference takes MLServer's full path: middleware %s has no lane", names)
        return False
    full = app.build_middleware_stack()
    patterns = [(compile_path(template)[0], template) for template in templates]

    async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path = get_route_path(scope)
            for pattern, template in patterns:
                matched = pattern.match(path)
                if matched is not None:
                    scope["path_params"] = matched.groupdict()
                    scope["lane.template"] = template
                    await lane(scope, receive, send)
                    return
        await full(scope, receive, send)

    app.middleware_stack = dispatch
    logger.info("REST inference takes the fast lane through MLServer's middleware (rest_fast_lane)")
    return True


PATCH = Patch(
    name="fast_lane",
    why="REST inference through the app's middleware without the router and FastAPI's route machinery",
    targets=(
        Target(
            "starlette.applications:Starlette.build_middleware_stack",
            "starlette",
            ("0.46.2",),
            "b1945c3832a1",
        ),
        Target("starlette.applications:Starlette.__call__", "starlette", ("0.46.2",), "5bf3135c4e85"),
        Target("starlette._utils:get_route_path", "starlette", ("0.46.2",), "243011d2a68c"),
        Target("starlette.routing:compile_path", "starlette", ("0.46.2",), "2220cd2f2fd4"),
        Target(
            "starlette_exporter.middleware:PrometheusMiddleware.__call__",
            "starlette_exporter",
            ("0.24.0",),
            "b2872570792e",
        ),
        Target("mlserver.rest.app:create_app", "mlserver", ("1.7.1",), "020929b1b329"),
    ),
)
