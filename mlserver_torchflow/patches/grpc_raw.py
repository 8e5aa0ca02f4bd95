"""Keep gRPC `raw_input_contents` as bytes for our models, so numpy decodes them in one step; read
the request parameters MLServer's older protobuf drops (Triton's `uint64_param`, `double_param`).

MLServer 1.7.1 unpacks raw contents with `struct.unpack` into Python lists (slow, and a buffer of
the wrong size becomes a 500). For models served by TorchFlowRuntime the converter instead leaves
each input's bytes in `data`, and `codec` checks the size against the shape and decodes them
with `np.frombuffer`. Other models in the same server keep MLServer's own path.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

from google.protobuf.unknown_fields import UnknownFieldSet
from mlserver import types
from mlserver.grpc import dataplane_pb2 as pb
from mlserver.grpc.converters import (
    InferRequestedOutputTensorConverter,
    InferTensorContentsConverter,
    ModelInferRequestConverter,
    ParametersConverter,
)

from ..errors import InvalidInput
from .targets import Patch, Target

T = TypeVar("T")

_models: Counter[str] = Counter()
_original = ModelInferRequestConverter.to_types


def register(model_name: str) -> None:
    """Called for each TorchFlow model, in every process that builds it (the main one converts). Counted:
    on a reload the new copy registers before the old one unregisters."""
    _models[model_name] += 1


def unregister(model_name: str) -> None:
    _models[model_name] -= 1
    if _models[model_name] <= 0:
        del _models[model_name]


def registered(model_name: str) -> bool:
    """Whether a TorchFlow model of this name was built in this process (it decodes raw bytes itself)."""
    return model_name in _models


def install() -> None:
    ModelInferRequestConverter.to_types = classmethod(_to_types)  # type: ignore[method-assign,assignment,arg-type]


def _to_types(cls: type, pb_object: pb.ModelInferRequest) -> types.InferenceRequest:
    return _convert(pb_object)


def _convert(pb_object: pb.ModelInferRequest) -> types.InferenceRequest:
    if pb_object.model_name in _models and not pb_object.raw_input_contents:
        request = _original(pb_object)
        request.parameters = parameters(pb_object.parameters)
        return request
    if pb_object.model_name not in _models:
        try:
            return _original(pb_object)
        except (struct.error, ValueError, TypeError, KeyError, IndexError, OverflowError) as err:
            # MLServer unpacks raw contents before it looks the model up: for an unknown (or another
            # runtime's) model a buffer of the wrong size or an odd datatype was an INTERNAL error.
            raise InvalidInput(
                f"raw_input_contents do not match the inputs' datatypes and shapes ({err}); send one "
                "buffer per input holding exactly the shape's values."
            ) from err
    request = types.InferenceRequest.model_construct(
        id=pb_object.id,
        parameters=parameters(pb_object.parameters),
        inputs=[_input(inp) for inp in pb_object.inputs],
    )
    if pb_object.outputs:
        request.outputs = [InferRequestedOutputTensorConverter.to_types(o) for o in pb_object.outputs]
    empty = [inp for inp in request.inputs if not inp.data]
    for inp, buffer in pair_raw(empty, pb_object.raw_input_contents):
        inp.data = types.TensorData.model_construct(root=buffer)
    return request


def pair_raw(empty: list[T], raw: Sequence[bytes]) -> Iterator[tuple[T, bytes]]:
    """Each input sent without contents with its raw buffer, in order, as Triton pairs them: one
    buffer for each such input, or an `InvalidInput`."""
    if len(raw) != len(empty):
        raise InvalidInput(
            f"the request has {len(raw)} raw_input_contents for {len(empty)} inputs without "
            "contents; send one raw buffer per input, in input order."
        )
    return zip(empty, raw, strict=True)


def _input(pb_input: pb.ModelInferRequest.InferInputTensor) -> types.RequestInput:
    """MLServer's `InferInputTensorConverter.to_types` without its deprecated pydantic `construct`,
    which raises (and filters) a warning for every input of every request."""
    return types.RequestInput.model_construct(
        name=pb_input.name,
        shape=list(pb_input.shape),
        datatype=pb_input.datatype,
        parameters=ParametersConverter.to_types(pb_input.parameters),
        data=InferTensorContentsConverter.to_types(pb_input.contents),
    )


def parameters(pb_map: Any) -> types.Parameters | None:
    """MLServer's conversion, plus the values its older `InferParameter` cannot read: Triton's
    `uint64_param` (field 5: tritonclient sends `priority` so) and `double_param` (field 4) arrive as
    unknown fields, which MLServer drops, silently ignoring a request's priority."""
    found = ParametersConverter.to_types(pb_map)
    if found is None:
        return None
    for key, value in pb_map.items():
        if getattr(found, key, None) is not None:
            continue
        for field in UnknownFieldSet(value):
            if field.field_number == 5 and field.wire_type == 0:  # uint64_param: a varint
                setattr(found, key, int(field.data))
            elif field.field_number == 4 and field.wire_type == 1:  # double_param: 8 bytes, as an int
                setattr(found, key, struct.unpack("<d", struct.pack("<Q", field.data))[0])
    return found


PATCH = Patch(
    name="grpc_raw",
    why="keep raw_input_contents as bytes for our models (numpy decodes them; a wrong size is a 400)",
    targets=(
        Target(
            "mlserver.grpc.converters:ModelInferRequestConverter.to_types",
            "mlserver",
            ("1.7.1",),
            "d0789c311998",
        ),
        Target(  # copied by _input, less its deprecated `construct`
            "mlserver.grpc.converters:InferInputTensorConverter.to_types",
            "mlserver",
            ("1.7.1",),
            "32abace70f36",
        ),
    ),
    install=install,
)
