"""Compare the versions a model was saved with against the running ones (no torch import)."""

from __future__ import annotations

import platform
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import yaml

from ..common import logger, major_minor
from ..errors import ModelLoadError
from .layout import ModelFiles

_PIN = re.compile(r"^\s*(torch|mlflow|mlflow-skinny)\s*==\s*([0-9][^\s;#]*)", re.I)


@dataclass(frozen=True)
class VersionCheck:
    package: str
    saved: str
    running: str | None

    @property
    def matches(self) -> bool:
        return self.running is not None and major_minor(self.saved) == major_minor(self.running)

    def describe(self) -> str:
        return f"{self.package}: saved with {self.saved}, running {self.running or 'not installed'}"

    def state(self) -> str:
        """For the model's metadata (`torchflow.version.<package>`)."""
        return f"saved {self.saved}, running {self.running or 'not installed'} ({'ok' if self.matches else 'MISMATCH'})"


def saved_versions(files: ModelFiles) -> dict[str, str]:
    """What the model says it needs: the flavor, the requirements.txt pins and the Python version."""
    saved: dict[str, str] = {}
    torch_version = files.pytorch_flavor.get("pytorch_version")
    if torch_version:
        saved["torch"] = str(torch_version)
    requirements = files.model_dir / "requirements.txt"
    for line in _read_lines(requirements):
        match = _PIN.match(line)
        if match:
            name = "mlflow" if match.group(1).lower().startswith("mlflow") else "torch"
            saved.setdefault(name, match.group(2))
    python = ((files.mlmodel.get("flavors") or {}).get("python_function") or {}).get("python_version")
    if not python:
        env = _read_yaml(files.model_dir / "python_env.yaml")
        python = env.get("python") if isinstance(env, dict) else None
    if python:
        saved["python"] = str(python)
    return saved


def running_versions() -> dict[str, str | None]:
    return {
        "torch": _installed("torch"),
        "mlflow": _installed("mlflow") or _installed("mlflow-skinny"),
        "python": platform.python_version(),
    }


def check_versions(files: ModelFiles, strict: bool) -> list[VersionCheck]:
    """Warn on a major.minor mismatch (the most common deployment failure); fail if `strict`."""
    running = running_versions()
    checks = [VersionCheck(p, v, running.get(p)) for p, v in saved_versions(files).items()]
    mismatched = [c for c in checks if not c.matches]
    if mismatched:
        text = "; ".join(c.describe() for c in mismatched)
        # The runtime never loads through mlflow, so an mlflow mismatch is reported but never fatal.
        if strict and any(c.package != "mlflow" for c in mismatched):
            raise ModelLoadError(
                f"version mismatch ({text}) and strict_versions is true. Serve the model with the "
                "versions it was saved with (build the image with that torch), or set "
                "strict_versions: false to load it anyway."
            )
        logger.warning("model %s was saved with other versions: %s", files.model_dir, text)
    return checks


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []


def _read_yaml(path: Path) -> object:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
