"""A handle on MLServer's running REST app and gRPC server, to add what Triton's clients call.

MLServer 1.7.1 builds its FastAPI app and its gRPC server before it imports any runtime, and offers
no hook for routes beyond one fixed path per custom handler, nor any for gRPC methods. It does call
`RESTServer.add_custom_handlers(model)` in the main process for every model it loads, with the
server that holds the app, the data plane and the repository handlers. This wraps that method: the
first call per server hands the serving layer a `Frontends`, once, then MLServer's own code runs.

The gRPC server is found beside it: the `GRPCServer` sharing the REST server's data plane (MLServer
starts both before it loads models, so it exists by then). gRPC lets generic handlers be added to a
running server; they see only methods no other handler serves. Its servicer's `ModelReady` answers
an unknown or unloaded model with UNKNOWN "Unexpected ModelNotFound"; Triton answers `ready: false`,
which tritonclient's and KServe's `is_model_ready` expect, so the servicer gets a data plane whose
`model_ready` says False then (REST keeps MLServer's 404).
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlserver.errors import ModelNotFound
from mlserver.grpc.server import GRPCServer
from mlserver.rest.server import RESTServer

from ..config import server_settings
from ..errors import ModelLoadError
from .grpc_routes import intercepted
from .shutdown import draining
from .targets import Patch, Target


@dataclass(frozen=True)
class Frontends:
    """What the serving layer extends: the FastAPI app, MLServer's handlers and the gRPC server."""

    app: Any  # fastapi.FastAPI
    data_plane: Any  # mlserver.handlers.DataPlane
    repository: Any  # mlserver.handlers.ModelRepositoryHandlers
    grpc_server: Any  # grpc.aio.Server, or None when it cannot be found
    grpc_routable: bool = False  # its calls pass MLServer's metrics interceptor (`grpc_routes`)

    async def model(self, name: str, version: str | None = None) -> Any:
        """The model MLServer would run for this name and version (raises MLServer's ModelNotFound)."""
        return await self.data_plane._model_registry.get_model(name, version)

    async def models(self) -> list[Any]:
        return list(await self.data_plane._model_registry.get_models())

    async def ready(self) -> bool:
        return await ready(self.data_plane)

    async def model_ready(self, name: str, version: str | None = None) -> bool:
        """Raises MLServer's ModelNotFound for an unknown model (REST answers 404)."""
        return await model_ready(self.data_plane, name, version)

    def declare_extensions(self, names: tuple[str, ...]) -> None:
        """List Triton extensions in the server metadata (`GET /v2`): perf_analyzer asks for server-side
        statistics only from a server that declares `statistics`."""
        extensions = self.data_plane._settings.extensions
        extensions.extend(n for n in names if n not in extensions)


def _healthy(model: Any) -> bool:
    return bool(getattr(model, "healthy", True))  # a TorchFlow model whose pass hung is not


async def ready(data_plane: Any) -> bool:
    """MLServer's readiness, false while draining or while a model's copies are all hung."""
    if draining() or not await data_plane.ready():
        return False
    return all(_healthy(m) for m in await data_plane._model_registry.get_models())


async def model_ready(data_plane: Any, name: str, version: str | None = None) -> bool:
    if draining() or not await data_plane.model_ready(name, version):
        return False
    return _healthy(await data_plane._model_registry.get_model(name, version))


class _GrpcDataPlane:
    """MLServer's data plane as the gRPC servicer sees it: an unknown model is not ready, not an error."""

    def __init__(self, data_plane: Any) -> None:
        self._data_plane = data_plane

    def __getattr__(self, name: str) -> Any:
        return getattr(self._data_plane, name)

    async def ready(self) -> bool:
        return await ready(self._data_plane)

    async def model_ready(self, name: str, version: str | None = None) -> bool:
        try:
            return await model_ready(self._data_plane, name, version)
        except ModelNotFound:
            return False


_hooks: list[Callable[[Frontends], None]] = []
_mounted: set[int] = set()
_original = RESTServer.add_custom_handlers


def attach(hook: Callable[[Frontends], None]) -> None:
    """Call `hook` once for each MLServer started in this process (the main one), before its models load
    their custom handlers. Registering the same hook twice is a no-op."""
    if hook not in _hooks:
        _hooks.append(hook)


def _grpc_server(rest: RESTServer) -> tuple[Any, bool]:
    """The running gRPC server beside `rest`, and whether its calls pass the interceptor `grpc_routes` wraps."""
    for obj in gc.get_objects():
        if isinstance(obj, GRPCServer) and obj._data_plane is rest._data_plane:
            routable = intercepted(getattr(obj, "_interceptors", ()))
            if server_settings().restricted() and not routable:
                raise ModelLoadError(
                    "MLSERVER_TORCHFLOW_RESTRICTED_APIS needs MLServer's gRPC metrics interceptor to guard "
                    "the gRPC methods, and metrics are off (metrics_endpoint): turn them on, or unset it."
                )
            servicer = getattr(obj, "_inference_servicer", None)
            if servicer is not None and not isinstance(servicer._data_plane, _GrpcDataPlane):
                servicer._data_plane = _GrpcDataPlane(servicer._data_plane)
            return getattr(obj, "_server", None), routable
    return None, False


async def _add_custom_handlers(self: RESTServer, model: Any) -> Any:
    if id(self) not in _mounted:
        _mounted.add(id(self))
        frontends = Frontends(
            self._app, self._data_plane, self._model_repository_handlers, *_grpc_server(self)
        )
        for hook in _hooks:
            hook(frontends)
    return await _original(self, model)


def install() -> None:
    RESTServer.add_custom_handlers = _add_custom_handlers  # type: ignore[method-assign]


PATCH = Patch(
    name="frontends",
    why="add Triton's REST routes and gRPC methods to MLServer's running servers",
    targets=(
        # Called in the main process for each model loaded; holds `_app`, `_data_plane` and
        # `_model_repository_handlers`, set in `__init__`.
        Target("mlserver.rest.server:RESTServer.add_custom_handlers", "mlserver", ("1.7.1",), "5151a1884ab7"),
        Target("mlserver.rest.server:RESTServer.__init__", "mlserver", ("1.7.1",), "165df33682a4"),
        # Sets `_server` (the grpc.aio server) and `_inference_servicer`, and keeps `_data_plane`.
        Target("mlserver.grpc.server:GRPCServer._create_server", "mlserver", ("1.7.1",), "2bd570d750e1"),
        Target("mlserver.grpc.server:GRPCServer.__init__", "mlserver", ("1.7.1",), "e57a8a034613"),
        # Reads `self._data_plane.model_ready` per call; the metadata lists `_settings.extensions`.
        Target(
            "mlserver.grpc.servicers:InferenceServicer.ModelReady", "mlserver", ("1.7.1",), "6da5f14c1d92"
        ),
        Target("mlserver.handlers.dataplane:DataPlane.metadata", "mlserver", ("1.7.1",), "180d591e5c1f"),
        # Starts the REST and gRPC servers before it loads the models.
        Target("mlserver.server:MLServer.start", "mlserver", ("1.7.1",), "58ba8eea996c"),
        # The registry lookup `Frontends.model` makes, and where the data plane keeps it.
        Target("mlserver.handlers.dataplane:DataPlane.__init__", "mlserver", ("1.7.1",), "cb48f5e2370b"),
        Target("mlserver.registry:MultiModelRegistry.get_model", "mlserver", ("1.7.1",), "b691068b4ebd"),
        # The routes replaced or shadowed by serving.rest, with the behaviour they keep.
        Target("mlserver.rest.app:create_app", "mlserver", ("1.7.1",), "020929b1b329"),
        Target("mlserver.rest.endpoints:Endpoints.infer", "mlserver", ("1.7.1",), "58bcc2ee184a"),
        Target("mlserver.rest.app:APIRoute.get_route_handler", "mlserver", ("1.7.1",), "5a624909d431"),
    ),
    install=install,
)
