"""What every layer shares: the runtime's logger, the shape of a model's outputs, and the few text
helpers that keep messages short (a client-sent name or an exception is clipped before it is echoed).

No torch, no MLServer: the bottom of the package, importable from anywhere.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

LOGGER_NAME = "mlserver.torchflow"
logger = logging.getLogger(LOGGER_NAME)

Named = list[tuple[str, np.ndarray]]
"""A model's outputs, named and in order: what a forward pass returns and a response encodes."""


def rows_of(arrays: list[np.ndarray]) -> int:
    """The batch size of a request: its first input's first dimension (1 for a scalar or no input)."""
    return int(arrays[0].shape[0]) if arrays and arrays[0].ndim else 1


def first_line(text: object, limit: int = 300) -> str:
    """The first line of a message (an exception's, say), clipped; an empty one gives the type name."""
    lines = str(text).strip().splitlines()
    if lines:
        return lines[0][:limit]
    return type(text).__name__ if isinstance(text, BaseException) else ""


def clip(text: str, limit: int = 120) -> str:
    """`text`, shortened with `...` when over `limit` characters."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def quote(name: Any) -> str:
    """A client-sent name for an error message: quoted, and clipped so a huge name cannot echo back."""
    return clip(repr(name), 80)


def major_minor(version: str) -> tuple[str, ...]:
    """`2.13.0+cpu` -> ("2", "13"): what a saved model and the running package must share."""
    return tuple(version.split("+")[0].split(".")[:2])
