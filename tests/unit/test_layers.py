"""The package's layers: every import runs down, the protocol needs no torch, importing patches nothing.

Read from the source with `ast`, so that an import inside a function counts as much as one at the top.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "mlserver_torchflow"
# Top to bottom; a module may import its own layer and any layer below it, never one above.
LAYERS = ("serving", "engine", "protocol", "patches", "base")
BASE = ("config", "errors", "common")
# Third-party imports a layer must not make itself (the layer's reason to exist).
FORBIDDEN = {"protocol": ("torch", "fastapi", "starlette"), "base": ("torch", "fastapi", "starlette")}


def layer_of(module: str) -> str:
    """`mlserver_torchflow.engine.batching` -> `engine`; the package's root modules are `base`."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in LAYERS:
        return parts[1]
    if len(parts) == 1 or parts[1] in BASE or parts[1] == "__init__":
        return "base"
    raise AssertionError(f"{module} belongs to no layer: put it in one of {LAYERS} or {BASE}")


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(module: str, path: Path) -> list[str]:
    """Every module `module` imports, absolute, relative ones resolved."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from . import logs` imports the module `logs`, not a name in the package.
            names += [f"{target}.{a.name}" for a in node.names] if node.module is None else [target]
    return names


def test_every_module_is_in_a_layer_and_imports_run_down() -> None:
    wrong = []
    for module, path in modules().items():
        if module == "mlserver_torchflow":
            continue  # the package's lazy door to the runtime class (see its docstring)
        rank = LAYERS.index(layer_of(module))
        for name in imports(module, path):
            if name.startswith("mlserver_torchflow") and LAYERS.index(layer_of(name)) < rank:
                wrong.append(f"{module} ({LAYERS[rank]}) imports {name} ({layer_of(name)})")
            for banned in FORBIDDEN.get(LAYERS[rank], ()):
                if name == banned or name.startswith(f"{banned}."):
                    wrong.append(f"{module} ({LAYERS[rank]}) imports {name}")
    assert not wrong, "imports that run up, or that the layer must not make:\n" + "\n".join(wrong)


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """The check above would pass vacuously if `imports` missed relative imports: it does not."""
    source = tmp_path / "codec.py"
    source.write_text("from ..engine import batching\nfrom ..serving.logs import x\nimport torch\n")
    found = imports("mlserver_torchflow.protocol.codec", source)
    assert found == ["mlserver_torchflow.engine", "mlserver_torchflow.serving.logs", "torch"]
    assert [layer_of(n) for n in found[:2]] == ["engine", "serving"]


@pytest.mark.parametrize(
    "module",
    ["mlserver_torchflow.protocol.codec", "mlserver_torchflow.protocol.metadata", "mlserver_torchflow"],
)
def test_importing_a_lower_layer_loads_no_torch_and_patches_nothing(module: str) -> None:
    """In a fresh interpreter: the protocol (and the package itself) import without torch, and no
    import installs a patch (only the runtime's constructor does, through `patches.install`)."""
    script = f"""
import sys
import fastapi.exception_handlers as handlers
from mlserver.rest.requests import Request
body, encoder = Request.body, handlers.jsonable_encoder
import {module}
assert "torch" not in sys.modules, "torch was imported"
assert Request.body is body and handlers.jsonable_encoder is encoder, "a patch was installed on import"
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_only_the_settings_read_the_environment() -> None:
    """One settings object built once (`config/`): no other module reads `os.environ` or `os.getenv`.
    The one other that touches it, patches/torch_load, sets torch's own switch around a load and puts
    back what was there; it reads no setting of ours."""
    allowed = ("mlserver_torchflow.config", "mlserver_torchflow.patches.torch_load")
    readers = [
        module
        for module, path in modules().items()
        if not module.startswith(allowed)
        and any(word in path.read_text(encoding="utf-8") for word in ("os.environ", "getenv"))
    ]
    assert modules() and not readers, f"these read the environment themselves: {readers}"
