"""Read the model's own input example, to warm it up on the target device before it reports ready."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from ..errors import ModelLoadError
from ..protocol.signature import Interface
from .layout import ModelFiles, example_names, inside


def load_example(files: ModelFiles, interface: Interface) -> list[np.ndarray] | None:
    """The arrays to pass to forward, or None when the model has no example."""
    candidates = [files.model_dir / n for n in example_names(files.mlmodel)]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        return None
    # locate() checked these already; checked again here, where the file is read.
    path = inside(files.root, path, "the input example")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
        return _to_arrays(_unwrap(content), interface)
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise ModelLoadError(
            f"the input example {path} does not match the model's signature: {err}. Fix or remove "
            "the example, or set warmup: false to skip it."
        ) from err


def _unwrap(content: Any) -> Any:
    """Serving examples wrap the payload: {"inputs": ...} or {"dataframe_split": ...}."""
    if isinstance(content, dict):
        for key in ("inputs", "instances", "dataframe_split", "dataframe_records"):
            if key in content:
                return content[key]
    return content


def _to_arrays(content: Any, interface: Interface) -> list[np.ndarray]:
    specs = interface.inputs
    if isinstance(content, dict) and "columns" in content and "data" in content:
        columns = list(content["columns"])
        table = np.asarray(content["data"])
        if specs is None:
            return [table]
        order = [columns.index(s.name) if s.name in columns else i for i, s in enumerate(specs)]
        dtype = np.result_type(*(s.dtype for s in specs))
        return [table[:, order].astype(dtype)]
    if isinstance(content, list) and content and isinstance(content[0], dict):  # records
        if specs is None:
            raise ValueError("a records example needs a column signature")
        table = np.asarray([[row[s.name] for s in specs] for row in content])
        return [table.astype(np.result_type(*(s.dtype for s in specs)))]
    if isinstance(content, dict):
        if specs is None:
            return [np.asarray(v) for v in content.values()]
        return [np.asarray(content[s.name], dtype=s.dtype) for s in specs]
    if specs is None:
        return [np.asarray(content)]
    if interface.columns:
        return [np.asarray(content).astype(np.result_type(*(s.dtype for s in specs)))]
    if len(specs) != 1:
        raise ValueError(f"one unnamed tensor given, the signature has {len(specs)} inputs")
    return [np.asarray(content, dtype=specs[0].dtype)]
