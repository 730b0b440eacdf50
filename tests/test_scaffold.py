"""`ddpmkit new-plugin NAME` writes a package whose own kit-based tests pass."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ddpmkit.app.cli import main
from ddpmkit.app.config import tomllib
from ddpmkit.core import registry


@pytest.fixture
def clean_modules() -> Iterator[None]:
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith("ddpmkit_demo"):
            del sys.modules[name]
    registry._cache.clear()


def install_without_pip(folder: Path, site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What `pip install -e` gives, by hand: the source on sys.path and a .dist-info holding
    the entry points declared in the generated pyproject.toml."""
    project = tomllib.loads((folder / "pyproject.toml").read_text())["project"]
    dist = project["name"].replace("-", "_")
    info = site / f"{dist}-{project['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    )
    lines = []
    for group, entries in project["entry-points"].items():
        lines.append(f"[{group}]")
        lines.extend(f"{name} = {value}" for name, value in entries.items())
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.syspath_prepend(str(folder / "src"))


def test_new_plugin_writes_a_package_whose_tests_pass(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    clean_modules: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["new-plugin", "demo-sched", "--directory", str(tmp_path)]) == 0
    folder = tmp_path / "ddpmkit-demo-sched"
    assert f"wrote {folder}" in capsys.readouterr().out
    assert (folder / "src" / "ddpmkit_demo_sched" / "__init__.py").is_file()
    install_without_pip(folder, tmp_path / "site", monkeypatch)
    assert registry.record("schedule", "demo-sched").distribution == "ddpmkit-demo-sched"
    code = pytest.main(
        [
            str(folder / "tests"),
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(folder),
            "-c",
            str(folder / "pyproject.toml"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "passed" in out and "failed" not in out


@pytest.mark.parametrize("name", ["Bad Name", "9lives", "trailing-", "a__b"])
def test_new_plugin_refuses_a_bad_name(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["new-plugin", name, "--directory", str(tmp_path)]) == 2
    assert "is not a plugin name" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_new_plugin_never_overwrites(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "ddpmkit-taken").mkdir()
    assert main(["new-plugin", "taken", "--directory", str(tmp_path)]) == 2
    assert "already exists" in capsys.readouterr().err
