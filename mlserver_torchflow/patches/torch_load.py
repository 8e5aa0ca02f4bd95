"""Two changes to how torch loads a model, each applied for one load and undone after it.

Both run only under the engine's load lock (`engine.loading`), so no other load sees them:

- `weights_only()`: force every `torch.load` in the block to `weights_only=True`. pt2 archives may
  hold tensors saved with torch.save, which `torch.export.load` reads with `weights_only=False` and
  no way to ask otherwise; torch reads `TORCH_FORCE_WEIGHTS_ONLY_LOAD` on every call.
- `pt2_weights_on_cpu()`: a pt2 exported on a GPU records `cuda` for its weights, and torch 2.13's
  `torch.export.load` creates them there (it has no `map_location`): on a CPU-only host that fails.
  When the target is the CPU and there is no CUDA, weights are placed on the CPU;
  `move_to_device_pass` then rewrites the graph's own device arguments.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from .targets import Patch, Target

_FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
_FORCE_NO_WEIGHTS_ONLY = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


@contextlib.contextmanager
def weights_only(force: bool) -> Iterator[None]:
    if not force:
        yield
        return
    saved = {k: os.environ.pop(k, None) for k in (_FORCE_WEIGHTS_ONLY, _FORCE_NO_WEIGHTS_ONLY)}
    os.environ[_FORCE_WEIGHTS_ONLY] = "1"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def pt2_weights_on_cpu(device: torch.device) -> Iterator[None]:
    if device.type != "cpu" or torch.cuda.is_available():
        yield
        return
    from torch.export.pt2_archive import _package

    original = _package.deserialize_device
    _package.deserialize_device = lambda _saved: torch.device("cpu")  # type: ignore[assignment]
    try:
        yield
    finally:
        _package.deserialize_device = original


PATCH = Patch(
    name="torch_load",
    why="load pt2 weights-only when pickles are refused; load a GPU-saved pt2 on a CPU-only host",
    targets=(
        # Reads TORCH_FORCE_WEIGHTS_ONLY_LOAD / TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD on each call.
        Target("torch.serialization:load", "torch", ("2.13.0",), "88ef1ebdb04a"),
        # Looks `deserialize_device` up in its module for each weight it creates.
        Target("torch.export.pt2_archive._package:_build_file_map", "torch", ("2.13.0",), "7bb719271f3a"),
        Target("torch.export.pt2_archive._package:deserialize_device", "torch", ("2.13.0",), "7ff07542ec53"),
    ),
)
