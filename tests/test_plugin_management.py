"""Plugin management: block and allow lists (environment and pipeline.toml) applied before
import, the autoload switch, the plugin API version, hook tracing, `ddpmkit plugins`."""

from __future__ import annotations

import json
import logging
import re
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_registry import SCHEDULE_SOURCE, make_distribution

import ddpmkit
from ddpmkit.app.cli import main
from ddpmkit.core import hooks, plugin_policy, registry
from ddpmkit.core.errors import IncompatiblePluginError, PluginError

API = 'DDPMKIT_PLUGIN_API = "{}"\n'


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A site-packages-like folder on sys.path; a clean policy, caches and modules after."""
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    for variable in (
        plugin_policy.ENV_BLOCK,
        plugin_policy.ENV_ALLOW,
        plugin_policy.ENV_DISABLE_AUTOLOAD,
        plugin_policy.ENV_TRACE,
    ):
        monkeypatch.delenv(variable, raising=False)
    before = set(sys.modules)
    yield folder
    for name in set(sys.modules) - before:
        if name.startswith("thirdparty"):
            del sys.modules[name]
    registry._cache.clear()
    plugin_policy.configure()
    hooks._setup.cache_clear()


def constant_plugin(
    site: Path, dist: str = "ddpmkit_constant", api: str | None = ddpmkit.PLUGIN_API_VERSION
) -> None:
    """A third-party distribution registering the schedule ``constant`` (its name is written
    with underscores, as the .dist-info folder name needs)."""
    module = f"thirdparty_{dist}"
    source = textwrap.dedent(SCHEDULE_SOURCE) + (API.format(api) if api is not None else "")
    make_distribution(
        site, dist, module, source, {"ddpmkit.schedules": {"constant": f"{module}:ConstantBeta"}}
    )


def test_env_block_list_keeps_a_plugin_from_being_imported(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    constant_plugin(site)
    monkeypatch.setenv(plugin_policy.ENV_BLOCK, "DDPMKIT_Constant")  # names are normalised
    with pytest.raises(PluginError, match="ddpmkit_constant is blocked by DDPMKIT_BLOCK_PLUGINS"):
        ddpmkit.create("schedule", "constant")
    assert "thirdparty_ddpmkit_constant" not in sys.modules
    monkeypatch.delenv(plugin_policy.ENV_BLOCK)
    assert ddpmkit.create("schedule", "constant", timesteps=3).T == 3


def test_autoload_off_loads_only_ddpmkit_and_allowed_plugins(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    constant_plugin(site)
    monkeypatch.setenv(plugin_policy.ENV_DISABLE_AUTOLOAD, "1")
    with pytest.raises(PluginError, match="not in the allow list"):
        ddpmkit.create("schedule", "constant")
    assert ddpmkit.create("schedule", "cosine", timesteps=4).T == 4  # bundled still load
    monkeypatch.setenv(plugin_policy.ENV_ALLOW, "ddpmkit-constant:constant")
    assert ddpmkit.create("schedule", "constant", timesteps=3).T == 3


def test_a_duplicate_name_is_resolved_by_blocking_one(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    constant_plugin(site, "ddpmkit_one")
    constant_plugin(site, "ddpmkit_two")
    with pytest.raises(PluginError, match=r"DDPMKIT_BLOCK_PLUGINS=DIST:constant"):
        ddpmkit.create("schedule", "constant")
    monkeypatch.setenv(plugin_policy.ENV_BLOCK, "ddpmkit-one:constant")
    assert registry.record("schedule", "constant").distribution == "ddpmkit_two"


def test_a_major_api_mismatch_is_refused_clearly(site: Path) -> None:
    constant_plugin(site, api="3.1")
    with pytest.raises(IncompatiblePluginError) as info:
        ddpmkit.create("schedule", "constant")
    message = str(info.value)
    assert "ddpmkit_constant 1.2.3 is written for ddpmkit plugin API 3.1" in message
    assert f"provides API {ddpmkit.PLUGIN_API_VERSION}" in message


def test_a_newer_minor_api_loads_and_a_missing_one_warns(site: Path) -> None:
    constant_plugin(site, "ddpmkit_minor", api="2.7")
    assert ddpmkit.create("schedule", "constant").T == 100
    registry._cache.clear()
    constant_plugin(site, "ddpmkit_undeclared", api=None)
    with pytest.warns(UserWarning, match="does not declare DDPMKIT_PLUGIN_API"):
        plugin_policy.check_api(
            "thirdparty_ddpmkit_undeclared", "ddpmkit_undeclared", "1.2.3", "schedule 'constant'"
        )


def test_pipeline_plugins_table_blocks_before_building(
    site: Path, write_pipeline: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    constant_plugin(site)
    path = write_pipeline(
        ('type = "linear"', 'type = "constant"'),
        ("[output]", '[plugins]\nblock = ["ddpmkit-constant"]\n\n[output]'),
    )
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "schedule.type: schedule 'constant' from distribution ddpmkit_constant" in err
    assert "blocked by [plugins] block" in err and "Traceback" not in err
    assert "thirdparty_ddpmkit_constant" not in sys.modules


def test_pipeline_can_block_a_bundled_hook_plugin(
    site: Path, write_pipeline: Callable[..., Path]
) -> None:
    path = write_pipeline(
        ("steps = 6", "steps = 2"),
        ("[output]", '[plugins]\nblock = ["ddpmkit:jsonl"]\n\n[output]'),
    )
    assert main(["run", str(path), "--quiet"]) == 0
    run = path.parent / "runs" / "tiny"
    assert (run / "config.json").exists() and not (run / "metrics.jsonl").exists()


def test_trace_logs_every_hook_call(
    site: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(plugin_policy.ENV_TRACE, "1")
    caplog.set_level(logging.INFO, logger="ddpmkit.plugins")
    info = ddpmkit.RunInfo(directory=site, config={}, seed=0)
    hook = hooks.plugin_manager().hook
    hook.ddpmkit_run_start(run=info)
    hook.ddpmkit_train_metrics(run=info, step=7, metrics={"loss": 0.5})
    hook.ddpmkit_run_end(run=info, status="completed")
    traced = [r.getMessage() for r in caplog.records if r.name == "ddpmkit.plugins"]
    assert traced[0].startswith("hook ddpmkit_run_start() -> ")
    assert "ddpmkit:jsonl" in traced[0]
    assert traced[1].startswith("hook ddpmkit_train_metrics(step=7, metrics={'loss': 0.5})")
    assert traced[2].startswith("hook ddpmkit_run_end(status='completed')")
    assert len(traced) == 3
    # a component import is traced too
    registry._cache.pop(("schedule", "cosine"), None)
    registry.load("schedule", "cosine")
    assert "loaded schedule 'cosine' from ddpmkit" in caplog.records[-1].getMessage()


def test_plugins_command_groups_by_distribution_with_status(
    site: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    constant_plugin(site, "ddpmkit_good")
    make_distribution(
        site,
        "ddpmkit_mixed",
        "thirdparty_mixed",
        API.format("9.0"),
        {
            "ddpmkit.samplers": {"future": "thirdparty_mixed:Nope"},
            "ddpmkit.plugins": {"futurehooks": "thirdparty_mixed"},
        },
    )
    make_distribution(
        site,
        "ddpmkit_broken",
        "thirdparty_broken",
        "raise RuntimeError('boom')\n",
        {"ddpmkit.denoisers": {"broken": "thirdparty_broken:Nope"}},
    )
    monkeypatch.setenv(plugin_policy.ENV_BLOCK, "ddpmkit:jsonl")
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == f"ddpmkit {ddpmkit.__version__}  (plugin API {ddpmkit.PLUGIN_API_VERSION})"
    heading = {line.split()[0]: i for i, line in enumerate(lines) if not line.startswith(" ")}
    assert list(heading)[:1] == ["ddpmkit"]
    assert "ddpmkit_good" in heading and "ddpmkit_mixed" in heading
    good = lines[heading["ddpmkit_good"]]
    assert good == f"ddpmkit_good 1.2.3  (plugin API {ddpmkit.PLUGIN_API_VERSION})"
    assert lines[heading["ddpmkit_good"] + 1].split() == ["schedule", "constant", "ok"]
    mixed = "\n".join(lines[heading["ddpmkit_mixed"] :])
    assert re.search(r"sampler +future +incompatible: sampler 'future' .* API 9.0", mixed)
    assert re.search(r"hooks +futurehooks +incompatible: IncompatiblePluginError", mixed)
    broken = lines[heading["ddpmkit_broken"] + 1]
    assert "failed: denoiser 'broken'" in broken and "boom" in broken
    assert any(line.split()[:3] == ["hooks", "jsonl", "blocked"] for line in lines)
    assert lines[-1] == "plugin policy: DDPMKIT_BLOCK_PLUGINS"
    assert main(["plugins", "--json"]) == 0
    data = {d["name"]: d for d in json.loads(capsys.readouterr().out)}
    assert data["ddpmkit_good"]["components"] == [
        {"kind": "schedule", "name": "constant", "status": "ok", "reason": ""}
    ]


def test_sample_guidance_section_wraps_the_samplers_predictions(
    site: Path, write_pipeline: Callable[..., Path]
) -> None:
    """`[sample.guidance]` names a registered guidance; the sampler asks it for every
    prediction (a guidance adding 0.5 to x0 moves the samples up), and config.json records it."""
    from pydantic import Field

    from ddpmkit.app.config import load_config
    from ddpmkit.app.pipeline import Pipeline

    @ddpmkit.register("guidance", "shift-x0")
    class ShiftX0(ddpmkit.Guidance):
        class Params(ddpmkit.Params):
            shift: float = Field(0.0, description="Added to the predicted x0.")

        def guide(self, model, predict, x_t, t, cond):  # type: ignore[no-untyped-def]
            inner = predict(x_t, t, cond)
            alpha, sigma = model.alpha_sigma(t, x_t.ndim)
            x0 = inner.x0 + self.params.shift
            eps = ddpmkit.eps_from_x0(x_t, x0, alpha, sigma)
            return ddpmkit.Prediction(eps=eps, x0=x0, output=inner.output)

    try:
        plain = Pipeline.build(load_config(write_pipeline()))
        path = write_pipeline(
            ("[output]", '[sample.guidance]\ntype = "shift-x0"\nshift = 0.5\n\n[output]'),
            name="guided.toml",
        )
        guided = Pipeline.build(load_config(path))
        assert guided.guidance is not None and plain.guidance is None
        model = plain.model  # the same untrained weights (same seed) for both
        a = plain.draw_samples(model, 4, seed=0, progress=False)
        b = guided.draw_samples(model, 4, seed=0, progress=False)
        assert float((b - a).mean()) > 0.1
        resolved = guided.resolved_config()["sample"]["guidance"]
        assert resolved == {"type": "shift-x0", "shift": 0.5}
    finally:
        registry.unregister("guidance", "shift-x0")
