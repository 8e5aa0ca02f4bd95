"""Warm-up before a model copy reports ready: its own input example, then, when it is compiled, one
pass at every row count a batch can have, so that no request waits for a compilation; and, when it
batches, a few timed passes at two sizes that tell the batcher the device's fixed and per-row cost
before the first request (`calibrate`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor

import numpy as np

from ..common import Named, first_line, logger
from ..config import BatchConfig
from ..errors import ModelLoadError
from ..protocol.signature import Interface
from .merging import BatchKey, batch_key
from .offload import measured


def batch_sizes(config: BatchConfig) -> tuple[int, ...]:
    """Every preferred size, and `max_batch_size` when batching. When a batch can have any row count
    (no preferred sizes, or no batcher to pad to them), 1 and 2 as well: one row is always a graph of
    its own, and a second size makes the batch dimension dynamic (compiling.py)."""
    sizes = set(config.preferred_batch_sizes)
    batching = config.max_batch_size > 1
    if batching:
        sizes.add(config.max_batch_size)
    if not batching or not config.preferred_batch_sizes:
        sizes.update((1, 2))
    return tuple(sorted(sizes))


def inputs_of(rows: int, example: list[np.ndarray] | None, interface: Interface) -> list[np.ndarray] | None:
    """Inputs of `rows` rows: the example's rows repeated, else zeros of the signature's shapes and
    datatypes. None when neither says what a row is (no example and a free trailing dimension), or
    when the signature fixes the batch dimension."""
    specs = interface.inputs
    if specs and any(s.shape and s.shape[0] != -1 for s in specs):
        return None
    if example is not None:
        if any(a.ndim == 0 for a in example):
            return None
        return [np.resize(a, (rows, *a.shape[1:])) for a in example]
    if not specs:
        return None
    if interface.columns:
        return [np.zeros((rows, len(specs)), np.result_type(*(s.dtype for s in specs)))]
    if any(s.shape is None or not s.shape or -1 in s.shape[1:] for s in specs):
        return None
    return [np.zeros((rows, *(s.shape or ())[1:]), s.dtype) for s in specs]


async def run_example(
    run: Callable[[list[np.ndarray]], Named], executor: Executor, example: list[np.ndarray], where: str
) -> Named:
    """The model's own example must run: a model that cannot serve it does not become ready."""
    try:
        return await asyncio.get_running_loop().run_in_executor(executor, run, example)
    except Exception as err:
        raise ModelLoadError(
            f"the model failed on its own input example {where}: {type(err).__name__}: {err}. The "
            "model cannot serve its own example; check the device, dtype setting and signature, or "
            "set warmup: false to skip this check."
        ) from err


async def run_sizes(
    run: Callable[[list[np.ndarray]], Named],
    executor: Executor,
    sizes: tuple[int, ...],
    example: list[np.ndarray] | None,
    interface: Interface,
    where: str,
    passes: int = 1,
) -> tuple[int, ...]:
    """`passes` passes at each size (the first compiles what it needs); returns the sizes that ran."""
    loop = asyncio.get_running_loop()
    done: list[int] = []
    for rows in sizes:
        arrays = inputs_of(rows, example, interface)
        if arrays is None:
            break
        try:
            for _ in range(passes):
                await loop.run_in_executor(executor, run, arrays)
        except Exception as err:
            logger.exception("warm-up pass of %d rows failed %s", rows, where)
            raise ModelLoadError(
                f"compiling the model for a batch of {rows} rows failed {where}: "
                f"{type(err).__name__}: {first_line(err)}. Set compile: false, or try another "
                "compile_mode / compile_backend (the traceback is in the log)."
            ) from err
        done.append(rows)
    return tuple(done)


CALIBRATION_ROWS = 8  # the larger of the two sizes timed (at most max_batch_size)
CALIBRATION_PASSES = 3  # timed passes per size, after one untimed


async def calibrate(
    run: Callable[[list[np.ndarray]], Named],
    executor: Executor,
    max_rows: int,
    example: list[np.ndarray] | None,
    interface: Interface,
) -> tuple[BatchKey | None, list[tuple[int, float, float]]]:
    """The batch shape, and (rows, thread CPU seconds, wall seconds) of passes at 1 row and at up to
    CALIBRATION_ROWS rows of it.

    Batches of one size cannot tell a fixed cost from a per-row one (dispatch.CostModel), and a closed
    loop that settles on one batch size never shows the difference: timed here, the split is known
    from the first request. No samples when no input of a row's shape can be made."""
    loop = asyncio.get_running_loop()
    key, samples = None, []
    for rows in sorted({1, min(max_rows, CALIBRATION_ROWS)}):
        arrays = inputs_of(rows, example, interface)
        key = batch_key(arrays) if arrays is not None else None
        if arrays is None or key is None:
            return None, []
        await loop.run_in_executor(executor, run, arrays)
        for _ in range(CALIBRATION_PASSES):
            _, cpu, wall = await loop.run_in_executor(executor, measured, run, arrays)
            samples.append((rows, cpu, wall))
    return key, samples
