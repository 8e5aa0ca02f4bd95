"""What a batch is: which requests may share a forward pass, how their rows are joined and padded, and
how the outputs are split back. `batching` decides when a batch runs; this module, what it holds.

Only tensors are merged, never requests: every request arrives decoded and checked, so a batch is the
row-wise concatenation of inputs that agree on every dtype and trailing shape.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ..common import Named
from ..config import BatchConfig

BatchKey = tuple[Any, ...]


def batch_key(arrays: list[np.ndarray]) -> BatchKey | None:
    """Requests merge only when every input has the same dtype and trailing shape, and one row count.
    None: this request cannot be batched (a scalar input, or inputs with different row counts)."""
    if not arrays or any(a.ndim == 0 for a in arrays) or len({a.shape[0] for a in arrays}) != 1:
        return None
    return tuple((a.dtype.str, a.shape[1:]) for a in arrays)


def within(config: BatchConfig, max_rows: int | None) -> BatchConfig:
    """`config` with no batch (or padding) larger than `max_rows`, the most a model takes at once."""
    if max_rows is None or config.max_batch_size <= max_rows:
        return config
    sizes = tuple(s for s in config.preferred_batch_sizes if s <= max_rows)
    return dataclasses.replace(config, max_batch_size=max_rows, preferred_batch_sizes=sizes)


def padded_rows(rows: int, preferred: tuple[int, ...]) -> int:
    """The smallest preferred size that holds `rows`; `rows` itself above them all (or without any)."""
    return min((s for s in preferred if s >= rows), default=rows)


def concatenate(requests: list[list[np.ndarray]], rows: int) -> list[np.ndarray]:
    """Each input's rows from every request, in order, then zero rows up to `rows` (padding)."""
    arrays = [
        np.concatenate([r[k] for r in requests]) if len(requests) > 1 else requests[0][k]
        for k in range(len(requests[0]))
    ]
    have = int(arrays[0].shape[0])
    if rows > have:
        arrays = [np.concatenate([a, np.zeros((rows - have, *a.shape[1:]), a.dtype)]) for a in arrays]
    return arrays


def has_batch_dimension(outputs: Named, rows: int) -> bool:
    """Whether every output has `rows` rows, so that it can be split by request."""
    return all(a.ndim > 0 and a.shape[0] == rows for _, a in outputs)


def split(outputs: Named, counts: list[int]) -> list[Named]:
    """The outputs of a batch, cut back into each request's rows (views, no copies)."""
    answers = []
    offset = 0
    for count in counts:
        answers.append([(name, array[offset : offset + count]) for name, array in outputs])
        offset += count
    return answers


def join(first: Named, second: Named) -> Named:
    """The outputs of two halves of a batch (run apart after an out-of-memory), as one batch's."""
    return [(name, np.concatenate([a, b])) for (name, a), (_, b) in zip(first, second, strict=True)]
