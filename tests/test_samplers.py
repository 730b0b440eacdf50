"""DDPM and DDIM: determinism, the update rules, and exactness on Gaussian data."""

from __future__ import annotations

import pytest
import torch
from helpers import GaussianOracle

import ddpmkit
from ddpmkit import DiffusionModel, SamplerStep
from ddpmkit_samplers.ddim import ddim_timesteps

MU, S = torch.tensor([1.5, -0.5]), 0.5


def oracle_model(timesteps: int = 200, variance: str | None = None) -> DiffusionModel:
    schedule = ddpmkit.create("schedule", "linear", timesteps=timesteps)
    return DiffusionModel(
        schedule,
        GaussianOracle(MU.tolist(), S),
        ddpmkit.create("parameterization", "eps"),
        variance=ddpmkit.create("variance", variance) if variance else None,
        decoder="gaussian",
    )


SAMPLERS = [("ddpm", {}), ("ddim", {"steps": 100})]


@pytest.mark.parametrize(
    ("name", "params", "variance"),
    [*[(n, p, None) for n, p in SAMPLERS], ("ddpm", {}, "fixed-small")],
)
def test_samplers_reproduce_gaussian_data(name: str, params: dict, variance: str | None) -> None:
    """With the exact eps, each sampler draws N(MU, S^2 I)."""
    model = oracle_model(variance=variance)
    sampler = ddpmkit.create("sampler", name, **params)
    x = sampler.sample(model, (8000, 2), generator=torch.Generator().manual_seed(0))
    # 8000 draws: standard error of the mean S / sqrt(8000) ~ 0.006, of the std ~ 0.004;
    # discretisation with T = 200 (DDIM: 100 steps) shrinks the std by about 2% more
    torch.testing.assert_close(x.mean(0), MU, atol=0.03, rtol=0)
    torch.testing.assert_close(x.std(0), torch.full((2,), S), atol=0.02, rtol=0)


def test_ddim_converges_as_steps_grow() -> None:
    """DDIM's discretisation error (it under-disperses) shrinks as the step count grows."""
    model = oracle_model()
    errors = []
    for steps in (10, 25, 50, 200):
        sampler = ddpmkit.create("sampler", "ddim", steps=steps)
        x = sampler.sample(model, (4000, 2), generator=torch.Generator().manual_seed(0))
        errors.append((x.std(0) - S).abs().mean().item())
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 0.02


@pytest.mark.parametrize(("name", "params"), [*SAMPLERS, ("ddim", {"steps": 10, "eta": 1.0})])
def test_same_seed_same_samples(name: str, params: dict) -> None:
    model = oracle_model(100)
    sampler = ddpmkit.create("sampler", name, **params)
    a = sampler.sample(model, (16, 2), generator=torch.Generator().manual_seed(3))
    b = sampler.sample(model, (16, 2), generator=torch.Generator().manual_seed(3))
    c = sampler.sample(model, (16, 2), generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_ddim_eta0_is_deterministic_given_x_T() -> None:
    model = oracle_model(100)
    sampler = ddpmkit.create("sampler", "ddim", steps=10, eta=0.0)
    x_T = torch.randn(32, 2)
    a = sampler.sample(model, (32, 2), x_T=x_T, generator=torch.Generator().manual_seed(1))
    b = sampler.sample(model, (32, 2), x_T=x_T, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    # with eta = 1 the noise, hence the generator, matters
    noisy = ddpmkit.create("sampler", "ddim", steps=10, eta=1.0)
    c = noisy.sample(model, (32, 2), x_T=x_T, generator=torch.Generator().manual_seed(1))
    d = noisy.sample(model, (32, 2), x_T=x_T, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(c, d)


def test_ddim_step_matches_song_et_al_eq_12() -> None:
    model = oracle_model(100)
    sampler = ddpmkit.create("sampler", "ddim", steps=10, eta=0.5)
    x_t = torch.randn(4, 2)
    t, t_prev = 90, 80
    pred = model.predict(x_t, torch.full((4,), t))
    gen = torch.Generator().manual_seed(0)
    abar = model.alphas_cumprod64.tolist()
    out = sampler.step(model, pred, x_t, t, t_prev, gen, abar=abar)
    a_t, a_p = model.alphas_cumprod[t].double(), model.alphas_cumprod[t_prev].double()
    sigma = 0.5 * ((1 - a_p) / (1 - a_t) * (1 - a_t / a_p)).sqrt()
    z = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    expected = a_p.sqrt() * pred.x0 + (1 - a_p - sigma**2).sqrt() * pred.eps + sigma * z
    torch.testing.assert_close(out, expected.float(), rtol=1e-5, atol=1e-6)
    # the last step lands on x0 exactly when eta = 0
    last = ddpmkit.create("sampler", "ddim", steps=10).step(
        model, pred, x_t, t, -1, None, abar=abar
    )
    torch.testing.assert_close(last, pred.x0)


def test_ddim_with_the_model_variance() -> None:
    """variance = "model": with a fixed-small model, DDIM at eta = 1 is eq. 16 exactly; with
    a fixed-large one its noise is sigma^2 = beta_{t|s}."""
    x_T = torch.randn(16, 2, generator=torch.Generator().manual_seed(5))

    def run(model: DiffusionModel, **params: object) -> torch.Tensor:
        sampler = ddpmkit.create("sampler", "ddim", steps=10, eta=1.0, **params)
        return sampler.sample(model, (16, 2), x_T=x_T, generator=torch.Generator().manual_seed(6))

    small = oracle_model(100, "fixed-small")
    torch.testing.assert_close(run(small, variance="model"), run(small), rtol=1e-5, atol=1e-6)
    large = oracle_model(100, "fixed-large")
    assert not torch.allclose(run(large, variance="model"), run(large))


def test_ddpm_step_is_algorithm_2() -> None:
    """mu~(x_t, x0_hat) + sigma z equals Ho et al.'s eps form of Algorithm 2, line 4."""
    model = oracle_model(100)
    sampler = ddpmkit.create("sampler", "ddpm")
    x_t = torch.randn(4, 2)
    t = 40
    pred = model.predict(x_t, torch.full((4,), t))
    gen = torch.Generator().manual_seed(0)
    out = sampler.step(model, pred, x_t, t, t - 1, gen, abar=model.alphas_cumprod64.tolist())
    alpha, beta = model.schedule.alphas[t], model.schedule.betas[t]
    abar = model.schedule.alphas_cumprod[t]
    z = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    expected = (x_t - (1 - alpha) / (1 - abar).sqrt() * pred.eps) / alpha.sqrt() + beta.sqrt() * z
    torch.testing.assert_close(out, expected.float(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("spacing", "expected"),
    [
        ("leading", [90, 80, 70, 60, 50, 40, 30, 20, 10, 0]),
        ("trailing", [99, 89, 79, 69, 59, 49, 39, 29, 19, 9]),
        ("linspace", [99, 88, 77, 66, 55, 44, 33, 22, 11, 0]),
    ],
)
def test_ddim_spacings(spacing: str, expected: list[int]) -> None:
    assert ddim_timesteps(100, 10, spacing) == expected
    assert ddim_timesteps(100, 100, spacing) == list(range(99, -1, -1))


def test_ddim_more_steps_than_T_is_a_config_error() -> None:
    model = oracle_model(40)
    with pytest.raises(ddpmkit.ConfigError, match="steps = 50 exceeds"):
        ddpmkit.create("sampler", "ddim", steps=50).sample(model, (2, 2))


def test_callback_sees_every_step() -> None:
    model = oracle_model(30)
    seen: list[SamplerStep] = []
    ddpmkit.create("sampler", "ddim", steps=5).sample(model, (3, 2), callback=seen.append)
    assert [s.index for s in seen] == [0, 1, 2, 3, 4]
    assert [s.t for s in seen] == ddim_timesteps(30, 5, "leading")
    assert all(s.total == 5 and s.x.shape == (3, 2) for s in seen)


def test_clip_x0_keeps_predictions_in_range() -> None:
    model = oracle_model(50)  # data mean 1.5: unclipped x0 predictions exceed 1
    seen: list[SamplerStep] = []
    sampler = ddpmkit.create("sampler", "ddim", steps=5, clip_x0=True)
    x = sampler.sample(model, (64, 2), callback=seen.append)
    assert all(s.x0.abs().max() <= 1.0 for s in seen)
    assert x.abs().max() <= 1.0 + 1e-6


def test_every_spacing_gives_s_distinct_indices_in_range() -> None:
    """For all T <= 120 and S <= T: S distinct decreasing indices in 0..T-1 (trailing once
    overshot to -1 through float steps)."""
    for T in range(1, 121):
        for S in range(1, T + 1):
            for spacing in ("leading", "trailing", "linspace"):
                ts = ddim_timesteps(T, S, spacing)
                assert len(ts) == S and ts == sorted(ts, reverse=True), (T, S, spacing)
                assert ts[-1] >= 0 and ts[0] <= T - 1, (T, S, spacing)
