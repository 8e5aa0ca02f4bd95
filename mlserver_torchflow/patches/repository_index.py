"""The model states of MLServer's gRPC repository index as Triton spells them: `READY`, not `State.READY`.

MLServer 1.7.1 assigns each index item's `state` an enum member after validation, and its gRPC
converter writes `str(state)`: tritonclient's `get_model_repository_index` (and MLServer's own
`inference.model_repository` service) then read `State.READY`. REST was right already: pydantic
serialises the member by value. This passes the value to MLServer's converter.
"""

from __future__ import annotations

from typing import Any

from mlserver.grpc.converters import RepositoryIndexResponseItemConverter

from .targets import Patch, Target

_original = RepositoryIndexResponseItemConverter.from_types


def _from_types(cls: type, type_object: Any, use_model_repository: bool = False) -> Any:
    state = getattr(type_object.state, "value", type_object.state)
    return _original(type_object.model_copy(update={"state": state}), use_model_repository)


def install() -> None:
    RepositoryIndexResponseItemConverter.from_types = classmethod(_from_types)  # type: ignore[method-assign,assignment,arg-type]


PATCH = Patch(
    name="repository_index",
    why="gRPC repository index states read READY, not State.READY",
    targets=(
        Target(
            "mlserver.grpc.converters:RepositoryIndexResponseItemConverter.from_types",
            "mlserver",
            ("1.7.1",),
            "da99a3f25da2",
        ),
        # Assigns `item.state = State.READY` (a member) after building the item.
        Target(
            "mlserver.handlers.model_repository:ModelRepositoryHandlers._to_item",
            "mlserver",
            ("1.7.1",),
            "f0da1777cc0e",
        ),
    ),
    install=install,
)
