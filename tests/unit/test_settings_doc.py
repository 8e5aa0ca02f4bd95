"""docs/settings.md is what the settings' field docstrings say, and every setting has a docstring."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

from mlserver_torchflow.config import ServerSettings, TorchFlowSettings

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "settings_doc.py"


def test_the_settings_page_is_generated_from_the_code() -> None:
    generator = runpy.run_path(str(SCRIPT))
    page: Path = generator["PAGE"]
    assert page.read_text(encoding="utf-8") == generator["render"](), (
        "docs/settings.md is out of date: run python scripts/settings_doc.py"
    )


@pytest.mark.parametrize("settings", [TorchFlowSettings, ServerSettings])
def test_every_setting_is_documented_on_the_page(settings: type) -> None:
    page = (SCRIPT.parents[1] / "docs" / "settings.md").read_text(encoding="utf-8")
    for name, field in settings.model_fields.items():
        assert field.description, f"{settings.__name__}.{name} has no docstring"
        assert f"| `{name}` |" in page, f"{name} is missing from docs/settings.md"
