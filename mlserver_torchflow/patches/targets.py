"""What a patch declares about the third-party internal it touches, and how a target is fingerprinted.

A fingerprint is a hash of the target's source (or, for a table, of its contents), taken from the
installed package. Each `Target` carries the fingerprint of the version the patch was written for;
`tests/unit/serving/test_patches.py` recomputes them in a fresh interpreter, so an upgrade that
changes a target fails CI with the target's name instead of failing silently in production.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata


@dataclass(frozen=True)
class Target:
    """`path` is `module:qualified.name`; `package` the distribution that ships it."""

    path: str
    package: str
    versions: tuple[str, ...]
    fingerprint: str


@dataclass(frozen=True)
class Patch:
    """One patch: what it changes, why, and the targets it relies on.

    `install` is None for patches the engine applies in place, for one call (a context manager in
    the patch's module), rather than once for the process.
    """

    name: str
    why: str
    targets: tuple[Target, ...]
    install: Callable[[], None] | None = None


def resolve(path: str) -> object:
    module_name, _, qualname = path.partition(":")
    obj: object = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def fingerprint(path: str) -> str:
    """12 hex digits of the SHA-256 of the target's source, or of a table's sorted items."""
    obj = resolve(path)
    module = getattr(obj, "__module__", "") or ""
    if module.startswith("mlserver_torchflow"):
        raise RuntimeError(f"{path} is already patched: fingerprint it in a fresh interpreter")
    if isinstance(obj, dict):
        text = repr(sorted((repr(k), repr(v)) for k, v in obj.items()))
    else:
        target = getattr(obj, "__func__", obj)
        text = inspect.getsource(target)  # type: ignore[arg-type]
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def installed_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def untested(target: Target) -> str | None:
    """Why the running package is not the one the target was checked against, or None."""
    running = installed_version(target.package)
    if running is None or any(running == v or running.startswith(f"{v}+") for v in target.versions):
        return None
    return f"{target.path} was written for {target.package} {', '.join(target.versions)}, running {running}"
