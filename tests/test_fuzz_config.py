"""Fuzzing: random and mutated pipeline files, random component params.

The only outcomes allowed are success or the project's own user error (a ConfigError, or a
DataError for data that cannot be read): never another exception, so never a traceback. The
default suite runs a fixed (derandomized) set of examples in a few seconds; the slow variants
draw many fresh ones.
"""

from __future__ import annotations

import contextlib
import copy
import sys
from pathlib import Path
from typing import Any

import pytest

hypothesis = pytest.importorskip("hypothesis")  # in the test extra; CI installs it

from conftest import TINY  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from ddpmkit.app.config import load_config, validate_config  # noqa: E402
from ddpmkit.app.pipeline import Pipeline  # noqa: E402
from ddpmkit.core import registry  # noqa: E402
from ddpmkit.core.errors import ConfigError, DataError  # noqa: E402

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ALLOWED = (ConfigError, DataError)
NAMES = sorted({name for kind in registry.KIND_GROUPS for name in registry.names(kind)})

# values a user (or a corrupted file) might put anywhere: edge integers, non-finite floats,
# wrong types, names of components of every kind, tables and lists
VALUES = st.one_of(
    st.integers(-3, 12),
    st.sampled_from([2**31, 2**63 - 1, -(2**63), 10**9, 100_001]),
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.sampled_from([0.0, 0.5, 1.0, -1.0, 1e-12, 1e308, float("nan"), float("inf")]),
    st.booleans(),
    st.text(max_size=6),
    st.sampled_from([*NAMES, "../x", "", "os:system", "cuda:0", "cpu", "auto"]),
    st.lists(st.integers(-2, 6), max_size=4),
    st.lists(st.floats(-2, 2), max_size=3),
    st.builds(dict),
    st.dictionaries(st.sampled_from(["type", "steps", "x"]), st.integers(-2, 9), max_size=2),
)

SETTINGS: dict[str, Any] = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
}


def _base(tmp_path: Path) -> dict[str, Any]:
    return tomllib.loads(TINY.replace("{runs}", str(tmp_path / "runs")))


def _paths(data: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key path in ``data``, tables included."""
    found = []
    for key, value in data.items():
        path = (*prefix, key)
        found.append(path)
        if isinstance(value, dict):
            found += _paths(value, path)
    return found


def _mutate(data: dict[str, Any], draw: Any) -> dict[str, Any]:
    """Apply 1 to 3 random edits: replace a value, delete a key, or add a key."""
    data = copy.deepcopy(data)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(data)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        *parents, leaf = path
        node = data
        for part in parents:
            node = node[part]
            if not isinstance(node, dict):
                break
        else:
            action = draw(st.sampled_from(["set", "set", "delete", "add"]))
            if action == "set":
                node[leaf] = draw(VALUES)
            elif action == "delete":
                del node[leaf]
            else:
                new_key = draw(st.sampled_from(["type", "steps", "eta", "seed", "zzz"]))
                target = node[leaf] if isinstance(node[leaf], dict) else node
                target[new_key] = draw(VALUES)
    return data


def _check(data: dict[str, Any]) -> None:
    with contextlib.suppress(*ALLOWED):
        Pipeline.build(validate_config(data, "fuzz.toml"))


@st.composite
def mutated_pipelines(draw: Any, base: dict[str, Any]) -> dict[str, Any]:
    return _mutate(base, draw)


def _fuzz_pipelines(tmp_path: Path, examples: int, derandomize: bool) -> None:
    base = _base(tmp_path)

    @settings(max_examples=examples, derandomize=derandomize, **SETTINGS)
    @hypothesis.given(data=mutated_pipelines(base))
    def run(data: dict[str, Any]) -> None:
        _check(data)

    run()


def test_fuzz_mutated_pipelines(tmp_path: Path) -> None:
    _fuzz_pipelines(tmp_path, examples=60, derandomize=True)


@pytest.mark.slow
def test_fuzz_mutated_pipelines_many(tmp_path: Path) -> None:
    _fuzz_pipelines(tmp_path, examples=2000, derandomize=False)


def _fuzz_text(tmp_path: Path, examples: int, derandomize: bool) -> None:
    text = TINY.replace("{runs}", str(tmp_path / "runs"))
    lines = text.splitlines()
    path = tmp_path / "fuzz.toml"

    @settings(max_examples=examples, derandomize=derandomize, **SETTINGS)
    @hypothesis.given(
        cut=st.integers(0, len(lines) - 1),
        action=st.sampled_from(["delete", "duplicate", "insert", "truncate"]),
        junk=st.text(max_size=12),
        column=st.integers(0, 40),
    )
    def run(cut: int, action: str, junk: str, column: int) -> None:
        edited = list(lines)
        if action == "delete":
            del edited[cut]
        elif action == "duplicate":
            edited.insert(cut, edited[cut])
        elif action == "insert":
            line = edited[cut]
            edited[cut] = line[:column] + junk + line[column:]
        else:
            edited = edited[:cut]
        path.write_text("\n".join(edited), encoding="utf-8")
        with contextlib.suppress(*ALLOWED):
            Pipeline.build(load_config(path))

    run()


def test_fuzz_mutated_pipeline_text(tmp_path: Path) -> None:
    _fuzz_text(tmp_path, examples=60, derandomize=True)


@pytest.mark.slow
def test_fuzz_mutated_pipeline_text_many(tmp_path: Path) -> None:
    _fuzz_text(tmp_path, examples=2000, derandomize=False)


READS_FILES = {
    ("dataset", "image-folder"),  # tests/test_bad_data.py
    ("schedule", "diffusers-scheduler"),  # a folder path and nothing else
}


def _components() -> list[tuple[str, str]]:
    """Every registered component that loads here (an optional dependency may be missing)."""
    found = []
    for kind in registry.KIND_GROUPS:
        for name in registry.names(kind):
            try:
                registry.load(kind, name)
            except registry.PluginError:
                continue
            if (kind, name) not in READS_FILES:
                found.append((kind, name))
    return found


@st.composite
def component_params(
    draw: Any, components: list[tuple[str, str]]
) -> tuple[str, str, dict[str, Any]]:
    kind, name = draw(st.sampled_from(components))
    fields = list(registry.load(kind, name).Params.model_fields)
    keys = st.sampled_from([*fields, "unknown_key"]) if fields else st.just("unknown_key")
    params = draw(st.dictionaries(keys, VALUES, max_size=3))
    return kind, name, params


def _fuzz_components(examples: int, derandomize: bool) -> None:
    @settings(max_examples=examples, derandomize=derandomize, **SETTINGS)
    @hypothesis.given(case=component_params(_components()))
    def run(case: tuple[str, str, dict[str, Any]]) -> None:
        kind, name, params = case
        with contextlib.suppress(*ALLOWED):
            registry.create(kind, name, **params)

    run()


def test_fuzz_component_params() -> None:
    _fuzz_components(examples=150, derandomize=True)


@pytest.mark.slow
def test_fuzz_component_params_many() -> None:
    _fuzz_components(examples=3000, derandomize=False)
