"""The house rules of docs/architecture.md, checked: who may import whom, how long a function
and a core file may be."""

from __future__ import annotations

import ast
import importlib.metadata as md
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "plugins"

MAX_FUNCTION_LINES = 60
"""The longest a function or method may be, decorators excluded, docstring included: one
screen, one step of one algorithm."""

MAX_CORE_FILE_LINES = 500
"""The longest a file of ``ddpmkit/core`` may be: a core one reads in an afternoon."""


def _python_files(*roots: Path) -> list[Path]:
    return sorted(p for root in roots for p in root.rglob("*.py"))


def test_every_function_fits_on_a_screen() -> None:
    too_long = []
    for path in _python_files(ROOT / "ddpmkit", PLUGINS):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    where = path.relative_to(ROOT)
                    too_long.append(f"{where}:{node.lineno} {node.name} ({lines} lines)")
    assert not too_long, f"functions over {MAX_FUNCTION_LINES} lines: {too_long}"


def test_core_files_are_short() -> None:
    long_files = {
        str(path.relative_to(ROOT)): n
        for path in _python_files(ROOT / "ddpmkit" / "core")
        if (n := len(path.read_text().splitlines())) > MAX_CORE_FILE_LINES
    }
    assert not long_files, f"core files over {MAX_CORE_FILE_LINES} lines: {long_files}"


def _imported_modules(path: Path) -> set[str]:
    """Every module an ``import`` or ``from ... import`` in ``path`` names (any depth)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_plugins_import_only_the_public_api() -> None:
    """A bundled plugin imports ``ddpmkit`` (and ``ddpmkit.testing`` in its tests), never a
    private module: no back door that a third-party plugin would not have."""
    offending = []
    for path in _python_files(PLUGINS):
        for name in _imported_modules(path):
            if _under(name, "ddpmkit") and name.split(".")[1:2] in (["core"], ["app"], ["tools"]):
                offending.append(f"{path.relative_to(ROOT)}: {name}")
    assert not offending, offending


def test_core_imports_nothing_of_the_application() -> None:
    offending = []
    for path in _python_files(ROOT / "ddpmkit" / "core", ROOT / "ddpmkit" / "objectives"):
        for name in _imported_modules(path):
            if _under(name, "ddpmkit.app") or _under(name, "ddpmkit.tools"):
                offending.append(f"{path.relative_to(ROOT)}: {name}")
            if _under(name, "matplotlib"):
                offending.append(f"{path.relative_to(ROOT)}: {name}")
    assert not offending, offending


_PROBE = """
import importlib, importlib.metadata as md, json, sys
import ddpmkit
loaded = []
for ep in md.distribution("ddpmkit").entry_points:
    if ep.group.startswith("ddpmkit."):
        module = ep.value.split(":")[0]
        importlib.import_module(module)
        loaded.append(module)
bad = sorted(m for m in sys.modules
             if m.startswith(("ddpmkit.app", "ddpmkit.tools", "matplotlib")))
print(json.dumps({"loaded": loaded, "bad": bad}))
"""


def test_importing_ddpmkit_and_every_bundled_plugin_loads_no_application() -> None:
    """In a fresh interpreter: ``import ddpmkit`` and importing every bundled plugin's module
    loads neither ``ddpmkit.app``, ``ddpmkit.tools`` nor matplotlib."""
    assert md.distribution("ddpmkit") is not None
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert len(result["loaded"]) > 20, result  # the probe really imported the plugins
    assert result["bad"] == [], result["bad"]
