"""The registry: entry-point discovery without imports, lazy loading, isolation, errors."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch

import ddpmkit
from ddpmkit.core import registry
from ddpmkit.core.errors import ConfigError, PluginError


def make_distribution(
    root: Path, dist: str, module: str, source: str, entry_points: dict[str, dict[str, str]]
) -> None:
    """Write a minimal installed distribution (a .dist-info folder and its module) to ``root``."""
    info = root / f"{dist}-1.2.3.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    lines = []
    for group, eps in entry_points.items():
        lines.append(f"[{group}]")
        lines.extend(f"{name} = {value}" for name, value in eps.items())
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    (root / f"{module}.py").write_text(textwrap.dedent(source))


SCHEDULE_SOURCE = """
    import torch
    from pydantic import Field
    import ddpmkit

    class ConstantBeta(ddpmkit.NoiseSchedule):
        class Params(ddpmkit.Params):
            timesteps: int = Field(100, ge=1)
            beta: float = Field(0.05, gt=0, lt=1)

        def make_alphas_cumprod(self):
            betas = torch.full((self.params.timesteps,), self.params.beta, dtype=torch.float64)
            return torch.cumprod(1 - betas, 0)
"""


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh site-packages-like folder on sys.path, and a clean module cache afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith("thirdparty"):
            del sys.modules[name]
    registry._cache.clear()


def test_third_party_plugin_discovered_lazily_from_dist_info(site: Path) -> None:
    make_distribution(
        site,
        "ddpmkit_constant",
        "thirdparty_constant",
        SCHEDULE_SOURCE,
        {"ddpmkit.schedules": {"constant": "thirdparty_constant:ConstantBeta"}},
    )
    assert "constant" in registry.names("schedule")
    rec = registry.record("schedule", "constant")
    assert (rec.distribution, rec.version) == ("ddpmkit_constant", "1.2.3")
    # discovery did not import the plugin module
    assert "thirdparty_constant" not in sys.modules
    schedule = ddpmkit.create("schedule", "constant", timesteps=10, beta=0.1)
    assert "thirdparty_constant" in sys.modules
    torch.testing.assert_close(schedule.alphas_cumprod[-1].item(), 0.9**10)
    with pytest.raises(ConfigError, match="beta"):
        ddpmkit.create("schedule", "constant", beta=2.0)


def test_broken_plugin_is_reported_and_isolated(site: Path) -> None:
    make_distribution(
        site,
        "ddpmkit_broken",
        "thirdparty_broken",
        "raise RuntimeError('boom at import')\n",
        {"ddpmkit.schedules": {"broken": "thirdparty_broken:Nope"}},
    )
    with pytest.raises(PluginError) as info:
        ddpmkit.create("schedule", "broken")
    message = str(info.value)
    assert "ddpmkit_broken 1.2.3" in message and "boom at import" in message
    # the others still work
    assert ddpmkit.create("schedule", "cosine", timesteps=10).T == 10


def test_same_name_from_two_distributions_names_both(site: Path) -> None:
    for dist in ("ddpmkit_one", "ddpmkit_two"):
        make_distribution(
            site,
            dist,
            f"thirdparty_{dist}",
            SCHEDULE_SOURCE,
            {"ddpmkit.schedules": {"dup": f"thirdparty_{dist}:ConstantBeta"}},
        )
    with pytest.raises(PluginError, match="ddpmkit_one.*ddpmkit_two"):
        ddpmkit.create("schedule", "dup")


def test_unknown_name_lists_available_and_closest() -> None:
    with pytest.raises(PluginError) as info:
        ddpmkit.create("schedule", "cosin")
    assert "did you mean 'cosine'" in str(info.value)
    assert "linear" in str(info.value)
    with pytest.raises(PluginError, match="unknown component kind 'schedules'"):
        ddpmkit.create("schedules", "cosine")


def test_bundled_components_register_through_entry_points() -> None:
    expected = {
        "schedule": {"linear", "cosine", "sigmoid", "scaled-linear", "betas"},
        "parameterization": {"eps", "x0", "v"},
        "denoiser": {"unet"},
        "sampler": {"ddpm", "ddim"},
        "dataset": {"shapes", "image-folder"},
        "attribute-reader": {"shapes"},
    }
    for kind, bundled in expected.items():
        for name in bundled:
            rec = registry.record(kind, name)
            assert rec.distribution == "ddpmkit" and rec.entry_point is not None


def test_in_process_register() -> None:
    @ddpmkit.register("schedule", "half")
    class Half(ddpmkit.NoiseSchedule):
        def make_alphas_cumprod(self) -> torch.Tensor:
            return torch.tensor([0.5, 0.25], dtype=torch.float64)

    try:
        s = ddpmkit.create("schedule", "half")
        torch.testing.assert_close(s.betas, torch.tensor([0.5, 0.5], dtype=torch.float64))
        assert registry.record("schedule", "half").distribution == registry.LOCAL_DISTRIBUTION
        with pytest.raises(ConfigError, match="unknown key"):
            ddpmkit.create("schedule", "half", timesteps=3)
    finally:
        registry.unregister("schedule", "half")
    assert "half" not in registry.names("schedule")


def test_params_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"eta: Input should be less than or equal to 1"):
        ddpmkit.create("sampler", "ddim", eta=1.5)
    with pytest.raises(ConfigError, match=r"stepz: unknown key"):
        ddpmkit.create("sampler", "ddim", stepz=10)


def test_a_schedule_that_is_not_a_diffusion_is_refused() -> None:
    @ddpmkit.register("schedule", "flat")
    class Flat(ddpmkit.NoiseSchedule):
        def make_alphas_cumprod(self) -> torch.Tensor:
            return torch.tensor([1.0, 1.0, 0.5], dtype=torch.float64)

    try:
        with pytest.raises(ConfigError, match="Flat: alphas_cumprod must decrease strictly"):
            ddpmkit.create("schedule", "flat")
    finally:
        registry.unregister("schedule", "flat")


HOOK_SOURCE = """
    import ddpmkit

    @ddpmkit.hookimpl
    def ddpmkit_run_start(run, unexpected_argument):
        pass
"""


def test_hook_plugin_with_a_wrong_signature_is_reported_not_fatal(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ddpmkit.core import hooks

    make_distribution(
        site,
        "ddpmkit_badhook",
        "thirdparty_badhook",
        HOOK_SOURCE,
        {"ddpmkit.plugins": {"badhook": "thirdparty_badhook"}},
    )
    hooks._setup.cache_clear()
    try:
        statuses = {s.name: s for s in hooks.hook_plugin_statuses()}
        assert "unexpected_argument" in statuses["badhook"].error
        assert statuses["badhook"].distribution == "ddpmkit_badhook"
        assert statuses["jsonl"].error == ""
        names = [name for name, _ in hooks.plugin_manager().list_name_plugin()]
        assert "ddpmkit:jsonl" in names and not any("badhook" in n for n in names)
    finally:
        hooks._setup.cache_clear()
