"""V2 request inputs -> checked numpy arrays in forward order; model outputs -> V2 response outputs.

Every check runs before anything touches the model, and every failure is an `InvalidInput` (400) that
names the input, what the model expects and what came. No pandas: JSON lists and gRPC raw bytes go
straight to numpy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from mlserver.types import InferenceRequest, RequestInput, ResponseOutput, TensorData

from .errors import InvalidInput
from .signature import NUMPY_TO_V2, V2_TO_NUMPY, Interface, TensorSpec


def cast_allowed(got: np.dtype, expected: np.dtype) -> bool:
    """Value-preserving casts, plus float->float: the model computes in its own float type anyway."""
    if got == expected:
        return True
    if got.kind == "f" and expected.kind == "f":
        return True
    return bool(np.can_cast(got, expected, casting="safe"))


def decode_request(request: InferenceRequest, interface: Interface) -> list[np.ndarray]:
    """The arrays to pass to `forward`, in signature order (request order without a signature)."""
    by_name: dict[str, RequestInput] = {}
    for inp in request.inputs:
        if inp.name in by_name:
            raise InvalidInput(
                f"input {inp.name!r} appears more than once in the request; send each input once."
            )
        by_name[inp.name] = inp
    if interface.inputs is None:
        if not request.inputs:
            raise InvalidInput("the request has no inputs; send at least one tensor.")
        return [_decode(inp, None) for inp in request.inputs]

    expected = interface.input_names()
    unknown = [n for n in by_name if n not in expected]
    missing = [n for n in expected if n not in by_name]
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"unknown input(s) {unknown}")
        if missing:
            parts.append(f"missing input(s) {missing}")
        wanted = ", ".join(f"{s.name!r} ({s.describe()})" for s in interface.inputs)
        raise InvalidInput(
            f"{' and '.join(parts)}: this model takes {wanted}. GET /v2/models/<name> lists them."
        )
    arrays = [_decode(by_name[s.name], s) for s in interface.inputs]
    if interface.columns:
        return [_stack_columns(arrays, interface.inputs)]
    return arrays


def _decode(inp: RequestInput, spec: TensorSpec | None) -> np.ndarray:
    name = inp.name
    datatype = str(getattr(inp.datatype, "value", inp.datatype))
    got = V2_TO_NUMPY.get(datatype)
    if got is None:
        raise InvalidInput(
            f"input {name!r}: datatype {datatype!r} is not supported; expected "
            f"{spec.datatype if spec else 'one of ' + ', '.join(V2_TO_NUMPY)}."
        )
    shape = _check_shape(name, inp.shape, spec)
    if spec is not None and not cast_allowed(got, spec.dtype):
        raise InvalidInput(
            f"input {name!r}: expected {spec.describe()}, got datatype {datatype}, which cannot be "
            f"converted to {spec.datatype} without losing values. Send {spec.datatype}."
        )
    count = math.prod(shape)
    data = inp.data.root if hasattr(inp.data, "root") else inp.data
    array = (
        _from_bytes(name, data, got, count)
        if isinstance(data, bytes | bytearray)
        else _from_list(name, data, got, count, datatype)
    )
    array = array.reshape(shape)
    if spec is not None and array.dtype != spec.dtype:
        array = array.astype(spec.dtype)
    return array


def _check_shape(name: str, shape: Any, spec: TensorSpec | None) -> tuple[int, ...]:
    if not isinstance(shape, list | tuple) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in shape
    ):
        raise InvalidInput(f"input {name!r}: shape must be a list of integers, got {shape!r}.")
    if any(d < 0 for d in shape):
        raise InvalidInput(f"input {name!r}: shape {list(shape)} has a negative dimension; use sizes >= 0.")
    if spec is None or spec.shape is None:
        return tuple(shape)
    if len(shape) != len(spec.shape) or any(
        e not in (-1, g) for e, g in zip(spec.shape, shape, strict=False)
    ):
        raise InvalidInput(
            f"input {name!r}: expected shape {list(spec.shape)} (-1 = any size), got {list(shape)}."
        )
    return tuple(shape)


def _from_bytes(name: str, raw: bytes | bytearray, dtype: np.dtype, count: int) -> np.ndarray:
    if len(raw) != count * dtype.itemsize:
        raise InvalidInput(
            f"input {name!r}: the shape holds {count} {NUMPY_TO_V2[dtype]} values ({count * dtype.itemsize} "
            f"bytes), but raw_input_contents has {len(raw)} bytes."
        )
    return np.frombuffer(raw, dtype=dtype).copy()


def _from_list(name: str, data: Any, dtype: np.dtype, count: int, datatype: str) -> np.ndarray:
    try:
        array = np.asarray(data)
    except (ValueError, TypeError, OverflowError) as err:
        raise InvalidInput(f"input {name!r}: data is not a rectangular list of numbers ({err}).") from err
    if array.size and array.dtype.kind not in _DATA_KINDS[dtype.kind]:
        raise InvalidInput(
            f"input {name!r}: datatype {datatype} needs {_kind_words(dtype)}, but the data holds "
            f"{_kind_words(array.dtype)}."
        )
    if array.size != count:
        raise InvalidInput(
            f"input {name!r}: the shape holds {count} values, but data has {array.size}. "
            "The product of the shape must equal the number of values."
        )
    if dtype.kind in "iu" and array.size:
        info = np.iinfo(dtype)
        if array.min() < info.min or array.max() > info.max:
            raise InvalidInput(
                f"input {name!r}: values outside the {datatype} range [{info.min}, {info.max}]."
            )
    return array.astype(dtype, copy=False).reshape(-1)


# Which JSON value kinds each V2 kind takes: no silent float->int truncation, no 2.5 -> True.
_DATA_KINDS = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}


def _kind_words(dtype: np.dtype) -> str:
    return {"b": "booleans", "i": "integers", "u": "integers", "f": "numbers"}.get(dtype.kind, "non-numbers")


def _stack_columns(columns: list[np.ndarray], specs: Sequence[TensorSpec]) -> np.ndarray:
    if len({c.shape[0] for c in columns}) != 1:
        sizes = {s.name: int(c.shape[0]) for s, c in zip(specs, columns, strict=False)}
        raise InvalidInput(f"column inputs must all have the same number of rows, got {sizes}.")
    dtype = np.result_type(*(s.dtype for s in specs))
    return np.stack(columns, axis=1).astype(dtype, copy=False)


def output_names(outputs: Any, interface: Interface) -> list[str]:
    """Dict keys win; then the signature's names by position; then `output-N`."""
    if isinstance(outputs, dict):
        return [str(k) for k in outputs]
    count = len(outputs) if isinstance(outputs, tuple | list) else 1
    specs = interface.outputs
    if specs is not None and len(specs) == count:
        return [s.name for s in specs]
    return [f"output-{i}" for i in range(count)]


def encode_outputs(
    named: list[tuple[str, np.ndarray]], interface: Interface, requested: list[str] | None
) -> list[ResponseOutput]:
    specs = {s.name: s for s in interface.outputs or ()}
    result = []
    for name, array in named:
        if requested is not None and name not in requested:
            continue
        spec = specs.get(name)
        if spec is not None and array.dtype != spec.dtype:
            array = array.astype(spec.dtype)
        elif array.dtype not in NUMPY_TO_V2:
            array = array.astype(np.float32 if array.dtype.kind in "fV" else np.int64)
        result.append(
            ResponseOutput.model_construct(
                name=name,
                shape=list(array.shape),
                datatype=NUMPY_TO_V2[array.dtype],  # a str, as pydantic stores it (use_enum_values)
                parameters=None,
                data=TensorData.model_construct(root=array.reshape(-1).tolist()),
            )
        )
    return result


def check_requested(request: InferenceRequest, known: list[str] | None) -> list[str] | None:
    """The output names the client asked for (V2 `outputs`), checked against what the model returns."""
    if not request.outputs:
        return None
    names = [o.name for o in request.outputs]
    if known is not None:
        unknown = [n for n in names if n not in known]
        if unknown:
            raise InvalidInput(f"requested output(s) {unknown} do not exist; this model returns {known}.")
    return names
