"""The docs cannot fall behind the code: generated pages are current, and every hook, config
field and bundled component parameter is documented."""

from __future__ import annotations

import inspect
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from ddpmkit.app.config import PipelineConfig
from ddpmkit.core import hookspecs, registry
from ddpmkit.core.errors import PluginError
from ddpmkit.tools import docgen

ROOT = Path(__file__).resolve().parents[1]


def test_cli_reference_is_current() -> None:
    assert (ROOT / "docs" / "cli.md").read_text() == docgen.cli_page(), (
        "docs/cli.md is stale: run `python -m ddpmkit.tools.docgen`"
    )


def test_architecture_registry_table_is_current() -> None:
    page = (ROOT / "docs" / "architecture.md").read_text()
    assert page == docgen.with_registry_table(page), (
        "the registry table of docs/architecture.md is stale: run `python -m ddpmkit.tools.docgen`"
    )


def test_components_reference_is_current() -> None:
    for kind in registry.KIND_GROUPS:
        for rec in registry.records(kind):
            if rec.distribution == "ddpmkit":
                try:
                    registry.load(kind, rec.name)
                except PluginError as exc:  # an optional dependency is missing here
                    pytest.skip(f"cannot document every bundled component: {exc}")
    pages = docgen.component_pages()
    folder = ROOT / "docs" / "components"
    assert {p.name for p in folder.glob("*.md")} == set(pages), (
        "docs/components/ has stale or missing pages: run `python -m ddpmkit.tools.docgen`"
    )
    for name, text in pages.items():
        assert (folder / name).read_text() == text, (
            f"docs/components/{name} is stale: run `python -m ddpmkit.tools.docgen`"
        )
    # one page per bundled component, and the index links each
    bundled = [(k, n) for k in registry.KIND_GROUPS for n in docgen.bundled_names(k)]
    assert len(pages) == len(bundled) + 1
    for kind, name in bundled:
        assert f"]({docgen.page_name(kind, name)})" in pages["index.md"]


def test_every_hook_specification_is_documented() -> None:
    specs = [
        (name, f)
        for name, f in inspect.getmembers(hookspecs, inspect.isfunction)
        if name.startswith("ddpmkit_")
    ]
    assert specs
    for name, function in specs:
        assert (inspect.getdoc(function) or "").strip(), f"hook {name} has no docstring"
        hints = typing.get_type_hints(function, localns={"RunInfo": object})
        params = inspect.signature(function).parameters
        assert set(params) <= set(hints), f"hook {name}: every argument needs a type"
        assert hints.get("return", None) is type(None), f"hook {name}: annotate -> None"


def _models(model: type[BaseModel], path: str) -> list[tuple[str, type[BaseModel]]]:
    """``model`` and every section model nested in its fields, with their key paths."""
    found = [(path, model)]
    for key, field in model.model_fields.items():
        for arg in (field.annotation, *typing.get_args(field.annotation)):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                found.extend(_models(arg, f"{path}.{key}" if path else key))
    return found


def test_every_config_field_is_documented() -> None:
    models = _models(PipelineConfig, "")
    assert {"train", "sample", "plugins", "sample.guidance"} <= {p for p, _ in models}
    for path, model in models:
        assert (model.__doc__ or "").strip(), f"{model.__name__} has no docstring"
        for key, field in model.model_fields.items():
            where = f"{path}.{key}" if path else key
            assert (field.description or "").strip(), f"config field {where} has no description"


def test_the_field_check_would_catch_a_missing_description() -> None:
    class Undocumented(BaseModel):
        """A section."""

        documented: int = 0  # no Field(description=...)

    models = _models(Undocumented, "x")
    missing = [k for _, m in models for k, f in m.model_fields.items() if not f.description]
    assert missing == ["documented"]
