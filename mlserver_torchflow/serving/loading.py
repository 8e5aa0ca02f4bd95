"""What `TorchFlowRuntime.load()` does: one model from its settings to copies ready to serve.

Files are found (`engine.layout`), the signature read, versions checked, every copy loaded and warmed
(`engine.replicas`), and the interface completed from what the model showed at warm-up (outputs of an
unsigned model, a pt2 program's shape guards). A cached download that turns out damaged is fetched
once more. The result carries the facts that metadata reports as `torchflow.*`.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

from mlserver.settings import ModelSettings

from ..common import logger
from ..config import TorchFlowSettings, load_settings
from ..engine.compiling import describe as describe_compile
from ..engine.examples import load_example
from ..engine.layout import MLMODEL, ModelFiles, locate
from ..engine.replica import ObserverFactory
from ..engine.replicas import ReplicaSet, load_replicas
from ..engine.versions import check_versions
from ..errors import DamagedWeights, ModelLoadError
from ..protocol.metadata import observed_outputs
from ..protocol.shapes import ShapeRules
from ..protocol.signature import Interface, interface_from_mlmodel
from . import lifecycle
from .advice import advise


@dataclass
class Loaded:
    """A loaded model: its settings, its copies, the interface requests are checked against, and the
    facts for metadata."""

    torchflow: TorchFlowSettings
    batcher: ReplicaSet
    interface: Interface
    facts: dict[str, str]


def extra_of(model: ModelSettings) -> dict[str, Any] | None:
    """The model-settings' `parameters.extra`, where our settings live."""
    return model.parameters.extra if model.parameters else None


async def load_model(model: ModelSettings, observer: ObserverFactory, refetch: bool = True) -> Loaded:
    """Every copy of `model` loaded, placed and warmed up. `refetch`: a cached download that turns out
    damaged is removed and downloaded once more."""
    started = time.monotonic()
    name = model.name
    torchflow = load_settings(extra_of(model))
    folder, fetched = await lifecycle.model_folder(model, torchflow)
    files = locate(folder)
    interface = interface_of(files)
    versions = check_versions(files, torchflow.strict_versions)
    example = load_example(files, interface) if torchflow.warmup else None
    # One copy per device, each with its own executor thread and batcher (engine/replicas.py).
    try:
        batcher = await load_replicas(name, files, interface, torchflow, example, observer)
    except DamagedWeights as err:
        if not (fetched and fetched.cached and refetch):
            raise
        logger.warning("model %s: the cached copy is damaged (%s); downloading it again", name, err)
        fetched.evict()
        return await load_model(model, observer, refetch=False)
    first = batcher.replicas[0]
    try:  # the copies are closed, not leaked, if what follows fails
        interface = _complete(name, torchflow, batcher, interface, example is not None)
        facts = {
            "format": first.format.value,
            "device": batcher.describe(),
            "dtype": torchflow.dtype,
            "precision": torchflow.precision,
            "compile": describe_compile(first.backend, first.warmed_sizes) if first.backend else "off",
            "weights": str(files.weights),
            **(fetched.facts() if fetched else {}),
            "warmed_up": str(example is not None).lower(),
            **({"shapes": first.rules.describe(_names(interface))} if first.rules else {}),
            **{f"version.{c.package}": c.state() for c in versions},
        }
    except BaseException:
        await batcher.close()
        raise
    logger.info(
        "loaded model %s (%s, %s) from %s on %s in %.2fs",
        name,
        first.format.value,
        torchflow.dtype,
        files.weights,
        batcher.describe(),
        time.monotonic() - started,
    )
    return Loaded(torchflow, batcher, interface, facts)


def _complete(
    name: str, torchflow: TorchFlowSettings, batcher: ReplicaSet, interface: Interface, warmed_up: bool
) -> Interface:
    """The interface completed from what the first copy showed at warm-up (outputs of an unsigned
    model, a pt2 program's shape guards), handed to every copy."""
    first = batcher.replicas[0]
    advise(
        name, [r.device for r in batcher.replicas], torchflow.warmup, warmed_up or bool(first.warmed_sizes)
    )
    if interface.outputs is None and first.example_outputs is not None:
        interface = dataclasses.replace(interface, outputs=observed_outputs(first.example_outputs))
    if first.rules is not None:  # a pt2 program's shape guards: checked per request, as 400s
        interface = dataclasses.replace(interface, rules=first.rules)
        _warn_if_one_row(name, first.rules, interface)
    for replica in batcher.replicas:
        replica.predictor.interface = interface
    return interface


async def signature_on_disk(model: ModelSettings, settings: TorchFlowSettings) -> Interface:
    """The signature read from the model's files, without loading it (no torch needed): for Triton's
    model config where load() never ran (the main process, with parallel workers)."""
    return interface_from_mlmodel(locate((await lifecycle.model_folder(model, settings))[0]).mlmodel)


def _warn_if_one_row(name: str, rules: ShapeRules, interface: Interface) -> None:
    if rules.max_rows() == 1:
        logger.warning(
            "model %s: its pt2 program takes one row per request (%s): it was exported from a "
            "one-row input example, so a batch holds one row and requests of more rows get a 400. "
            "Re-save it with an input example of two or more rows.",
            name,
            rules.describe(_names(interface)),
        )


def _names(interface: Interface) -> list[str]:
    """The inputs' names in forward order (`input-N` where the model has no signature)."""
    count = len(interface.rules.inputs) if interface.rules else 0
    return interface.input_names() or [f"input-{i}" for i in range(count)]


def interface_of(files: ModelFiles) -> Interface:
    """The signature's interface; a broken signature names the MLmodel it is in."""
    try:
        return interface_from_mlmodel(files.mlmodel)
    except ModelLoadError as err:
        raise ModelLoadError(f"{files.model_dir / MLMODEL}: {err}") from err
