"""The model's V2 interface, read from the MLflow signature in the MLmodel (no torch import)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ModelLoadError
from .shapes import ShapeRules

# V2 datatype -> numpy dtype; the only datatypes a tensor model takes or returns here.
V2_TO_NUMPY: dict[str, np.dtype] = {
    name: np.dtype(np_name)
    for name, np_name in (
        ("BOOL", "bool"),
        ("UINT8", "uint8"),
        ("INT8", "int8"),
        ("INT16", "int16"),
        ("INT32", "int32"),
        ("INT64", "int64"),
        ("FP16", "float16"),
        ("FP32", "float32"),
        ("FP64", "float64"),
    )
}
NUMPY_TO_V2: dict[np.dtype, str] = {v: k for k, v in V2_TO_NUMPY.items()}
# MLflow column types (DataType enum names) that are numeric.
COLUMN_TO_V2 = {"boolean": "BOOL", "integer": "INT32", "long": "INT64", "float": "FP32", "double": "FP64"}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...] | None  # None: any shape; -1: any size in that dim

    @property
    def dtype(self) -> np.dtype:
        return V2_TO_NUMPY[self.datatype]

    def describe(self) -> str:
        shape = "any shape" if self.shape is None else f"shape {list(self.shape)}"
        return f"{self.datatype} with {shape}"


@dataclass(frozen=True)
class Interface:
    """`inputs` is None when the model has no signature: then any tensors, in request order."""

    inputs: tuple[TensorSpec, ...] | None
    outputs: tuple[TensorSpec, ...] | None
    columns: bool = False  # a DataFrame signature: the columns are stacked into one 2-D tensor
    rules: ShapeRules | None = None  # a pt2 program's own shape guards (`shapes`), known after load

    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs or ()]

    def output_names(self, outputs: Any) -> list[str]:
        """The names of what `forward` returned: dict keys win; then the signature's names by
        position; then `output-N`."""
        if isinstance(outputs, dict):
            return [str(k) for k in outputs]
        count = len(outputs) if isinstance(outputs, tuple | list) else 1
        if self.outputs is not None and len(self.outputs) == count:
            return [s.name for s in self.outputs]
        return [f"output-{i}" for i in range(count)]


def interface_from_mlmodel(mlmodel: dict[str, Any]) -> Interface:
    signature = mlmodel.get("signature") or {}
    inputs, columns = _parse(signature.get("inputs"), "input")
    outputs, _ = _parse(signature.get("outputs"), "output")
    return Interface(inputs=inputs, outputs=outputs, columns=columns)


def _parse(raw: Any, kind: str) -> tuple[tuple[TensorSpec, ...] | None, bool]:
    if not raw:
        return None, False
    try:
        specs = json.loads(raw) if isinstance(raw, str) else raw
        if not isinstance(specs, list):
            raise TypeError(f"expected a list of specs, got {type(specs).__name__}")
        is_tensor = [s.get("type") == "tensor" for s in specs]
        if any(is_tensor) and not all(is_tensor):
            raise ValueError("mixes tensor and column specs")
        parsed = tuple(
            (_tensor_spec if t else _column_spec)(spec, f"{kind}-{i}")
            for i, (spec, t) in enumerate(zip(specs, is_tensor, strict=False))
        )
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise ModelLoadError(
            f"the MLmodel's signature.{kind}s cannot be used: {err}. Supported: tensor specs of "
            f"{', '.join(str(d) for d in V2_TO_NUMPY.values())} "
            "or numeric column specs. Re-save the model with a numeric signature "
            "(mlflow.models.infer_signature on numpy arrays), or remove the signature."
        ) from err
    names = [s.name for s in parsed]
    if len(set(names)) != len(names):
        raise ModelLoadError(f"the MLmodel's signature.{kind}s repeats a name: {names}")
    return parsed, bool(parsed) and not is_tensor[0]


def _tensor_spec(spec: dict[str, Any], default_name: str) -> TensorSpec:
    tensor = spec["tensor-spec"]
    dtype = np.dtype(tensor["dtype"])
    if dtype not in NUMPY_TO_V2:
        raise ValueError(
            f"tensor dtype {tensor['dtype']!r} of {spec.get('name') or default_name!r} is not numeric"
        )
    shape = tuple(int(d) for d in tensor.get("shape") or ())
    return TensorSpec(str(spec.get("name") or default_name), NUMPY_TO_V2[dtype], shape)


def _column_spec(spec: dict[str, Any], default_name: str) -> TensorSpec:
    kind = spec["type"]
    if kind not in COLUMN_TO_V2:
        raise ValueError(f"column {spec.get('name') or default_name!r} has type {kind!r}, not a number")
    return TensorSpec(str(spec.get("name") or default_name), COLUMN_TO_V2[kind], (-1,))
