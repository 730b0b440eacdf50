"""A plugin that raises at import, at construction or inside a hook is named with its
distribution, and a run fails only if it needs that plugin."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_registry import make_distribution

import ddpmkit
from ddpmkit.app.cli import main
from ddpmkit.core import hooks, registry
from ddpmkit.core.hooks import plugin_manager

EXPLODING = """
    import ddpmkit_toy

    class Exploding(ddpmkit_toy.MLPDenoiser):
        def __init__(self, params=None):
            raise RuntimeError("no GPU driver found")
"""

BAD_HOOK = """
    import ddpmkit

    @ddpmkit.hookimpl
    def ddpmkit_train_metrics(run, step, metrics):
        if step >= 4:
            raise ValueError("disk quota of the logging service")
"""


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A site-packages-like folder with four broken plugin distributions on sys.path."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    make_distribution(
        root,
        "ddpmkit_brokenimport",
        "thirdparty_brokenimport",
        "raise ImportError('needs libfoo.so')\n",
        {"ddpmkit.schedules": {"broken-import": "thirdparty_brokenimport:Schedule"}},
    )
    make_distribution(
        root,
        "ddpmkit_exploding",
        "thirdparty_exploding",
        EXPLODING,
        {"ddpmkit.denoisers": {"exploding": "thirdparty_exploding:Exploding"}},
    )
    make_distribution(
        root,
        "ddpmkit_brokenhook",
        "thirdparty_brokenhook",
        "raise ImportError('needs the tensorboard package')\n",
        {"ddpmkit.plugins": {"brokenhook": "thirdparty_brokenhook"}},
    )
    make_distribution(
        root,
        "ddpmkit_badlogger",
        "thirdparty_badlogger",
        BAD_HOOK,
        {"ddpmkit.plugins": {"badlogger": "thirdparty_badlogger"}},
    )
    before = set(sys.modules)
    hooks._setup.cache_clear()
    yield root
    hooks._setup.cache_clear()
    for name in set(sys.modules) - before:
        if name.startswith("thirdparty"):
            del sys.modules[name]
    registry._cache.clear()


def test_a_plugin_failing_at_import_fails_only_the_pipeline_that_names_it(
    site: Path, write_pipeline: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", str(write_pipeline())]) == 0
    path = write_pipeline(('type = "linear"', 'type = "broken-import"'))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "schedule.type: schedule 'broken-import' from distribution" in err
    assert "ddpmkit_brokenimport 1.2.3 failed to load" in err and "needs libfoo.so" in err


def test_a_plugin_failing_at_construction_is_named_with_its_distribution(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "toy.toml"
    text = "device = 'cpu'\n[data]\ntype = 'two-moons'\n[denoiser]\ntype = '{}'\n"
    path.write_text(text.format("exploding"))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "denoiser: denoiser 'exploding' from distribution ddpmkit_exploding 1.2.3" in err
    assert "failed to build" in err and "RuntimeError: no GPU driver found" in err
    assert "Traceback" not in err
    path.write_text(text.format("mlp"))
    assert main(["validate", str(path)]) == 0


def test_a_hook_plugin_raising_is_named_and_earlier_checkpoints_stay(
    site: Path,
    write_pipeline: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    statuses = {s.name: s for s in hooks.hook_plugin_statuses()}
    assert statuses["badlogger"].error == ""  # it loads; it fails only when called
    assert main(["run", str(write_pipeline()), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert (
        "hook plugin 'badlogger' (distribution ddpmkit_badlogger 1.2.3) raised in "
        "ddpmkit_train_metrics: ValueError: disk quota of the logging service"
    ) in err
    checkpoints = sorted(p.name for p in (tmp_path / "runs/tiny/checkpoints").iterdir())
    # the hook raised at step 4 before that step's save: step 2 is the newest, and whole
    assert checkpoints == ["step-0000002.safetensors"]


def test_an_in_process_hook_plugin_raising_is_named(
    write_pipeline: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    class Fragile:
        @ddpmkit.hookimpl
        def ddpmkit_run_start(self, run: ddpmkit.RunInfo) -> None:
            raise KeyError("missing token")

    fragile = Fragile()
    plugin_manager().register(fragile, name="fragile")
    try:
        assert main(["run", str(write_pipeline()), "--quiet"]) == 2
    finally:
        plugin_manager().unregister(fragile)
    err = capsys.readouterr().err
    assert "hook plugin 'fragile' (registered in-process) raised in ddpmkit_run_start" in err


def test_a_hook_plugin_failing_at_import_is_listed_and_never_fatal(
    site: Path, write_pipeline: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    statuses = {s.name: s for s in hooks.hook_plugin_statuses()}
    assert statuses["brokenhook"].distribution == "ddpmkit_brokenhook"
    assert "ImportError: needs the tensorboard package" in statuses["brokenhook"].error
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = lines.index(next(x for x in lines if x.startswith("ddpmkit_brokenhook 1.2.3")))
    row = lines[header + 1]  # the distribution's one component, under its header
    assert row.split()[:2] == ["hooks", "brokenhook"] and "failed: ImportError" in row
    assert main(["validate", str(write_pipeline())]) == 0
