"""Model outputs -> V2 response outputs: the ones the client asked for (V2 `outputs`, checked against
what the model returns before it runs), each in its signature's dtype or one V2 carries."""

from __future__ import annotations

from typing import Any

import numpy as np
from mlserver.types import ResponseOutput, TensorData

from ..common import Named, quote
from ..errors import InvalidInput
from .signature import NUMPY_TO_V2, Interface


def select_outputs(named: Named, interface: Interface, requested: list[str] | None) -> Named:
    """The outputs the client asked for, each in its signature's dtype or one V2 carries."""
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
        result.append((name, array))
    return result


def response_outputs(selected: Named) -> list[ResponseOutput]:
    """`select_outputs`' arrays as MLServer's response outputs (JSON lists)."""
    return [
        ResponseOutput.model_construct(
            name=name,
            shape=list(array.shape),
            datatype=NUMPY_TO_V2[array.dtype],  # a str, as pydantic stores it (use_enum_values)
            parameters=None,
            data=TensorData.model_construct(root=array.reshape(-1).tolist()),
        )
        for name, array in selected
    ]


def check_requested(request: Any, known: list[str] | None) -> list[str] | None:
    """The output names the client asked for (V2 `outputs`), checked against what the model returns."""
    if not request.outputs:
        return None
    names = [o.name for o in request.outputs]
    if known is not None:
        unknown = [n for n in names if n not in known]
        if unknown:
            shown = ", ".join(quote(n) for n in unknown[:5])
            raise InvalidInput(f"requested output(s) [{shown}] do not exist; this model returns {known}.")
    return names
