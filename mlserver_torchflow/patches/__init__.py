"""Every patch of a third-party internal, behind one door.

| patch | changes | for |
|---|---|---|
| `body_limit` | MLServer's `Request.body` | a REST body cap, with `{"error"}` refusals |
| `validation_errors` | FastAPI's 422 handler's `jsonable_encoder` | a 422 stays a 422 on odd input |
| `grpc_raw` | MLServer's gRPC request converter | raw tensors decoded by numpy, not `struct` |
| `frontends` | MLServer's `RESTServer.add_custom_handlers` | a handle on the running app and gRPC server |
| `repository_index` | MLServer's gRPC repository index converter | states read `READY`, not `State.READY` |
| `grpc_status` | MLServer's status -> gRPC code table | 413 and 503 get their gRPC codes |
| `grpc_routes` | MLServer's gRPC metrics interceptor | restricted methods refused (`restricted`); inference re-routed to the gRPC lane |
| `shutdown` | `MLServer.stop` | SIGTERM drains: not ready, no new connections, accepted requests answered |
| `startup` | `DataPlane.ready`, a filter on MLServer's log | a failed startup exits 3, not 0 |
| `internals` | nothing (reads prometheus and MLServer state) | metric reuse, MLServer's log format |
| `fast_lane` | nothing (builds the app's middleware around the infer endpoint) | REST inference without the router |
| `grpc_lane` | nothing (reads MLServer's data plane, repeats its servicer's behaviour) | gRPC inference without pydantic |
| `torch_load` | torch.load's weights-only switch, pt2 devices, per load | safe and CPU-only pt2 loads |
| `torch_compile` | nothing (builds inductor's private wrapper) | compile modes behind our backend |

`install()` installs the process-wide ones, once; the runtime calls it when it builds a model. Each
patch lists its targets with the versions it was written for and a fingerprint of each target's
source; `tests/unit/serving/test_patches.py` recomputes them, so an upgrade of MLServer, FastAPI,
Starlette, prometheus_client or torch that changes a target fails CI. At install, a target whose
package runs at another version than the one it was written for is logged as a warning.
"""

from __future__ import annotations

from ..common import logger
from . import (
    body_limit,
    fast_lane,
    frontends,
    grpc_lane,
    grpc_raw,
    grpc_routes,
    grpc_status,
    internals,
    repository_index,
    shutdown,
    startup,
    torch_compile,
    torch_load,
    validation_errors,
)
from .targets import Patch, untested

PATCHES: tuple[Patch, ...] = (
    body_limit.PATCH,
    validation_errors.PATCH,
    grpc_raw.PATCH,
    frontends.PATCH,
    repository_index.PATCH,
    grpc_status.PATCH,
    grpc_routes.PATCH,
    shutdown.PATCH,
    startup.PATCH,
    internals.PATCH,
    fast_lane.PATCH,
    grpc_lane.PATCH,
    torch_load.PATCH,
    torch_compile.PATCH,
)
_installed: list[str] = []


def install() -> None:
    """Install every process-wide patch, once per process; later calls do nothing."""
    if _installed:
        return
    for patch in PATCHES:
        for target in patch.targets:
            reason = untested(target)
            if reason:
                logger.warning("patch %s: %s; check it before relying on it", patch.name, reason)
        if patch.install is not None:
            patch.install()
            _installed.append(patch.name)


def installed() -> tuple[str, ...]:
    """The names of the patches installed in this process, in order."""
    return tuple(_installed)
