"""Every patched or read third-party internal is the one its patch was written for.

An upgrade of MLServer, FastAPI, Starlette, prometheus_client or torch that changes a target fails
here, naming the target: re-read the patch against the new source, then update its versions and
fingerprint (`python -c "from mlserver_torchflow.patches.targets import fingerprint; print(fingerprint('<path>'))"`).
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mlserver_torchflow import patches
from mlserver_torchflow.patches.targets import Target, fingerprint, untested

TARGETS = [(p.name, t) for p in patches.PATCHES for t in p.targets]


def fresh_fingerprints() -> dict[str, str]:
    """Computed in a new interpreter: in this one, earlier tests may have installed the patches."""
    script = (
        "import json; from mlserver_torchflow.patches import PATCHES;"
        "from mlserver_torchflow.patches.targets import fingerprint;"
        "print(json.dumps({t.path: fingerprint(t.path) for p in PATCHES for t in p.targets}))"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


@pytest.fixture(scope="module")
def current() -> dict[str, str]:
    return fresh_fingerprints()


@pytest.mark.parametrize(("patch", "target"), TARGETS, ids=[t.path for _, t in TARGETS])
def test_target_is_the_version_and_source_the_patch_was_written_for(
    patch: str, target: Target, current: dict[str, str]
) -> None:
    assert untested(target) is None, f"patch {patch}: {untested(target)}"
    assert current[target.path] == target.fingerprint, (
        f"patch {patch}: the source of {target.path} changed ({target.fingerprint} -> "
        f"{current[target.path]}); check the patch against it, then update its fingerprint"
    )


def test_a_changed_source_changes_the_fingerprint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above can fail: one changed line in a target gives another fingerprint."""
    monkeypatch.syspath_prepend(str(tmp_path))
    module = tmp_path / "third_party_like.py"
    module.write_text("class Request:\n    async def body(self):\n        return b''\n")
    before = fingerprint("third_party_like:Request.body")
    module.write_text("class Request:\n    async def body(self):\n        return b'x'\n")
    importlib.reload(importlib.import_module("third_party_like"))
    assert fingerprint("third_party_like:Request.body") != before


def test_a_version_the_patch_was_not_written_for_is_reported() -> None:
    target = Target("mlserver.rest.requests:Request.body", "mlserver", ("0.0.1",), "-")
    reason = untested(target)
    assert reason is not None and "written for mlserver 0.0.1, running 1." in reason


def test_install_is_one_door_installed_once() -> None:
    patches.install()
    first = patches.installed()
    patches.install()
    assert patches.installed() == first
    assert set(first) == {p.name for p in patches.PATCHES if p.install is not None}
    from fastapi import exception_handlers
    from mlserver.grpc.converters import ModelInferRequestConverter
    from mlserver.rest.requests import Request

    for replaced in (Request.body, exception_handlers.jsonable_encoder, ModelInferRequestConverter.to_types):
        assert replaced.__module__.startswith("mlserver_torchflow.patches."), replaced
