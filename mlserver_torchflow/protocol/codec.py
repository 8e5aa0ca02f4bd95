"""V2 request inputs -> checked numpy arrays in forward order (the outputs' side: outputs.py).

Every check runs before anything touches the model, and every failure is an `InvalidInput` (400) that
names the input, what the model expects and what came, or a `RequestTooLarge` (413) when the declared
shape is over a limit (`limits`): sizes are decided from the shape before any data is converted. No
pandas: JSON lists and gRPC raw bytes go straight to numpy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from mlserver.types import InferenceRequest, RequestInput

from ..common import clip, quote
from ..config import RequestLimits
from ..errors import InvalidInput
from .limits import MAX_ID_CHARS, MAX_RANK, check_shape_size
from .signature import NUMPY_TO_V2, V2_TO_NUMPY, Interface, TensorSpec

_DEFAULT_LIMITS = RequestLimits()


def cast_allowed(got: np.dtype, expected: np.dtype) -> bool:
    """Value-preserving casts, plus float->float: the model computes in its own float type anyway."""
    if got == expected:
        return True
    if got.kind == "f" and expected.kind == "f":
        return True
    return bool(np.can_cast(got, expected, casting="safe"))


def decode_request(
    request: InferenceRequest, interface: Interface, limits: RequestLimits = _DEFAULT_LIMITS
) -> list[np.ndarray]:
    """The arrays to pass to `forward`, in signature order (request order without a signature)."""
    _check_id(request.id)
    by_name: dict[str, RequestInput] = {}
    for inp in request.inputs:
        if inp.name in by_name:
            raise InvalidInput(
                f"input {quote(inp.name)} appears more than once in the request; send each input once."
            )
        by_name[inp.name] = inp
    if interface.inputs is None:
        if not request.inputs:
            raise InvalidInput("the request has no inputs; send at least one tensor.")
        free = [_decode(inp, None, limits) for inp in request.inputs]
        _check_rules(interface, [str(i.name) for i in request.inputs], [a.shape for a in free])
        return free

    expected = interface.input_names()
    unknown = [n for n in by_name if n not in expected]
    missing = [n for n in expected if n not in by_name]
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"unknown input(s) [{', '.join(quote(n) for n in unknown[:5])}]")
        if missing:
            parts.append(f"missing input(s) {missing}")
        wanted = ", ".join(f"{s.name!r} ({s.describe()})" for s in interface.inputs)
        raise InvalidInput(
            f"{' and '.join(parts)}: this model takes {wanted}. GET /v2/models/<name> lists them."
        )
    # Every shape is checked against the limits before any input's data is converted.
    checked = [(by_name[s.name], s, _check_shape(by_name[s.name], s, limits)) for s in interface.inputs]
    if not interface.columns:  # the exported program's rules, before any data is converted
        _check_rules(interface, expected, [shape for _, _, (shape, _) in checked])
    arrays = [_decode(inp, spec, limits, shape) for inp, spec, shape in checked]
    if interface.columns:
        stacked = _stack_columns(arrays, interface.inputs)
        _check_rules(interface, ["the stacked columns"], [stacked.shape])
        return [stacked]
    return arrays


def _check_rules(interface: Interface, names: list[str], shapes: list[tuple[int, ...]]) -> None:
    if interface.rules is not None:
        interface.rules.check(names, shapes)


def _decode(
    inp: RequestInput,
    spec: TensorSpec | None,
    limits: RequestLimits,
    checked: tuple[tuple[int, ...], int] | None = None,
) -> np.ndarray:
    """`checked`: the (shape, count) that `_check_shape` returned already, so it runs once per input."""
    name = quote(inp.name)
    datatype = str(getattr(inp.datatype, "value", inp.datatype))
    got = V2_TO_NUMPY.get(datatype)
    if got is None:
        raise InvalidInput(
            f"input {name}: datatype {quote(datatype)} is not supported; expected "
            f"{spec.datatype if spec else 'one of ' + ', '.join(V2_TO_NUMPY)}."
        )
    shape, count = checked if checked is not None else _check_shape(inp, spec, limits)
    if spec is not None and not cast_allowed(got, spec.dtype):
        raise InvalidInput(
            f"input {name}: expected {spec.describe()}, got datatype {datatype}, which cannot be "
            f"converted to {spec.datatype} without losing values. Send {spec.datatype}."
        )
    data = inp.data.root if hasattr(inp.data, "root") else inp.data
    array = (
        _from_bytes(name, data, got, count)
        if isinstance(data, bytes | bytearray | memoryview)
        else _from_list(name, data, got, shape, datatype)
    )
    array = array.reshape(shape)
    if spec is not None and array.dtype != spec.dtype:
        with np.errstate(over="ignore"):  # FP64 1e300 -> FP32 inf, as the float policy allows
            array = array.astype(spec.dtype)
    return array


def _check_id(request_id: Any) -> None:
    """MLServer echoes the id in two response headers (CloudEvents) and gRPC trailing metadata.

    A huge id breaks every client, and a control or non-ASCII character makes the response itself fail
    (HTTP: illegal header value; gRPC: INTERNAL "Invalid metadata"), after the model has run.
    """
    if not isinstance(request_id, str):
        return
    if len(request_id) > MAX_ID_CHARS:
        raise InvalidInput(
            f"the request id is {len(request_id)} characters long; at most {MAX_ID_CHARS} are accepted "
            "(a UUID is 36)."
        )
    if not (request_id.isascii() and request_id.isprintable()):  # i.e. every character in " ".."~"
        raise InvalidInput(
            f"the request id {quote(request_id)} holds control or non-ASCII characters; it is echoed in "
            "response headers, so use printable ASCII (a UUID, say)."
        )


def _check_shape(
    inp: RequestInput, spec: TensorSpec | None, limits: RequestLimits
) -> tuple[tuple[int, ...], int]:
    """The declared shape and its element count: well-formed, the model's, and within the limits."""
    name, shape = quote(inp.name), inp.shape
    if isinstance(shape, list | tuple) and len(shape) > MAX_RANK:
        raise InvalidInput(
            f"input {name}: shape has {len(shape)} dimensions; at most {MAX_RANK} are supported."
        )
    if not isinstance(shape, list | tuple) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in shape
    ):
        raise InvalidInput(f"input {name}: shape must be a list of integers, got {clip(repr(shape))}.")
    if any(d < 0 for d in shape):
        raise InvalidInput(
            f"input {name}: shape {clip(str(list(shape)))} has a negative dimension; use sizes >= 1."
        )
    if (
        spec is not None
        and spec.shape is not None
        and (
            len(shape) != len(spec.shape)
            or any(e not in (-1, g) for e, g in zip(spec.shape, shape, strict=False))
        )
    ):
        raise InvalidInput(
            f"input {name}: expected shape {list(spec.shape)} (-1 = any size), got {clip(str(list(shape)))}."
        )
    return tuple(shape), check_shape_size(name, tuple(shape), limits)


def _from_bytes(name: str, raw: bytes | bytearray | memoryview, dtype: np.dtype, count: int) -> np.ndarray:
    if len(raw) != count * dtype.itemsize:
        raise InvalidInput(
            f"input {name}: the shape holds {count} {NUMPY_TO_V2[dtype]} values ({count * dtype.itemsize} "
            f"bytes), but its raw data (gRPC raw_input_contents, REST binary data) has {len(raw)} bytes."
        )
    return np.frombuffer(raw, dtype=dtype).copy()


def _from_list(name: str, data: Any, dtype: np.dtype, shape: tuple[int, ...], datatype: str) -> np.ndarray:
    count = math.prod(shape)
    if not isinstance(data, list | tuple):
        raise InvalidInput(
            f"input {name}: data must be a list of numbers (flat, or nested as the shape), got "
            f"{type(data).__name__}."
        )
    if len(data) > count:  # cheap, and spares converting a list that cannot fit the shape
        raise InvalidInput(
            f"input {name}: the shape holds {count} values, but data has at least {len(data)}. "
            "The product of the shape must equal the number of values."
        )
    try:
        array = np.asarray(data)
    except (ValueError, TypeError, OverflowError, RecursionError) as err:
        raise InvalidInput(
            f"input {name}: data is not a rectangular list of numbers ({clip(str(err))})."
        ) from err
    if array.size and array.dtype.kind not in _DATA_KINDS[dtype.kind]:
        raise InvalidInput(
            f"input {name}: datatype {datatype} needs {_kind_words(dtype)}, but the data holds "
            f"{_kind_words(array.dtype)}."
        )
    if array.size != count:
        raise InvalidInput(
            f"input {name}: the shape holds {count} values, but data has {array.size}. "
            "The product of the shape must equal the number of values."
        )
    if array.ndim > 1 and array.shape != shape:
        raise InvalidInput(
            f"input {name}: nested data has shape {clip(str(list(array.shape)))}, but the declared shape "
            f"is {clip(str(list(shape)))}; nest the data as the shape, or send it flat."
        )
    if dtype.kind in "iu" and array.size:
        info = np.iinfo(dtype)
        if array.min() < info.min or array.max() > info.max:
            raise InvalidInput(f"input {name}: values outside the {datatype} range [{info.min}, {info.max}].")
    with np.errstate(over="ignore"):  # 1e39 -> FP32 is inf: allowed for floats, like NaN over gRPC
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
