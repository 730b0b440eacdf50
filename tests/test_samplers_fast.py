"""Respaced DDPM, DPM-Solver++(2M) and dynamic thresholding, on the exact oracles."""

from __future__ import annotations

import pytest
import torch
from helpers import GaussianOracle

import ddpmkit
from ddpmkit import CheckContext, DiffusionModel, SamplerStep
from ddpmkit_samplers import dynamic_threshold
from ddpmkit_samplers.spacing import ddim_timesteps, logsnr_timesteps

MU, S = torch.tensor([1.5, -0.5]), 0.5
MIX = {
    "weights": [0.45, 0.3, 0.25],
    "means": [[-1.2, -0.7], [1.2, -0.7], [0.0, 1.3]],
    "covariances": [
        [[0.09, 0.03], [0.03, 0.04]],
        [[0.04, -0.02], [-0.02, 0.07]],
        [[0.08, 0.0], [0.0, 0.025]],
    ],
}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def gaussian_model(timesteps: int = 1000, variance: str | None = None) -> DiffusionModel:
    # unbounded Gaussian data: no data-range bound on the analytic variance
    params = {"data_half_range": 0.0} if variance == "analytic" else {}
    return DiffusionModel(
        ddpmkit.create("schedule", "linear", timesteps=timesteps),
        GaussianOracle(MU.tolist(), S),
        ddpmkit.create("parameterization", "eps"),
        variance=ddpmkit.create("variance", variance, **params) if variance else None,
        decoder="gaussian",
    )


def gmm_model(parameterization: str = "eps") -> DiffusionModel:
    return DiffusionModel(
        ddpmkit.create("schedule", "cosine", timesteps=300),
        ddpmkit.create("denoiser", "gmm-oracle", **MIX),
        ddpmkit.create("parameterization", parameterization),
        decoder="gaussian",
    )


# -- respaced DDPM ------------------------------------------------------------------------------


def test_respaced_ddpm_with_the_analytic_variance_is_exact_on_gaussian_data() -> None:
    """50 of T = 1000 steps reproduce N(MU, S^2 I) to sampling error.

    For Gaussian data q(x_s | x_t) of the respaced chain is Gaussian with mean mu~_{t|s}(x_t,
    E[x_0 | x_t]) and a variance that does not depend on x_t, which is what the analytic
    variance (Bao et al. 2022) estimates: the respaced chain is exact for any step count
    (measured: std within 0.01 of S at 5 .. 50 steps, two seeds). With 8000 draws the standard
    error of the mean is S / sqrt(8000) = 0.0056 and of the std 0.004; the mean also carries
    the prior mismatch sqrt(abar_{T-1}) MU ~ 0.01 (x_T ~ N(0, I) is not exactly q(x_T)). Had
    the respaced chain used beta_t of the training chain instead of beta_{t|s}, its variance
    would be ~20x too small and the std collapse towards 0.
    """
    model = gaussian_model(variance="analytic")
    data = MU + S * torch.randn(4000, 2, generator=gen(1))
    assert model.variance is not None
    model.variance.fit(model, [data])
    sampler = ddpmkit.create("sampler", "ddpm", steps=50)
    assert len(sampler.timesteps(model)) == 50
    x = sampler.sample(model, (8000, 2), generator=gen(0))
    torch.testing.assert_close(x.mean(0), MU, atol=0.03, rtol=0)
    torch.testing.assert_close(x.std(0), torch.full((2,), S), atol=0.02, rtol=0)


def test_respaced_ddpm_variances_bracket_the_data() -> None:
    """With sigma^2 = beta_{t|s} (fixed-large) the 50-step chain over-disperses, with beta~_{t|s}
    (fixed-small) it under-disperses, as on the full chain but more (measured with 20000
    draws: std 0.519 and 0.445 for S = 0.5); the bands leave 5 standard errors (0.02) either
    side."""
    large = ddpmkit.create("sampler", "ddpm", steps=50).sample(
        gaussian_model(), (8000, 2), generator=gen(0)
    )
    small = ddpmkit.create("sampler", "ddpm", steps=50).sample(
        gaussian_model(variance="fixed-small"), (8000, 2), generator=gen(0)
    )
    assert ((large.std(0) > 0.50) & (large.std(0) < 0.54)).all(), large.std(0)
    assert ((small.std(0) > 0.42) & (small.std(0) < 0.47)).all(), small.std(0)


def test_full_chain_ddpm_is_unchanged() -> None:
    """steps = None (and steps = T) is Ho et al.'s Algorithm 2 on every index, same noise."""
    model = gaussian_model(60)
    x = ddpmkit.create("sampler", "ddpm").sample(model, (16, 2), generator=gen(7))
    same = ddpmkit.create("sampler", "ddpm", steps=60).sample(model, (16, 2), generator=gen(7))
    assert torch.equal(x, same)
    # Algorithm 2 written out: x_{t-1} = (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t)
    # + sqrt(beta_t) z, with z = 0 on the last step; the noise drawn in the sampler's order
    g = gen(7)
    alphas, betas = model.schedule.alphas, model.schedule.betas
    abar = model.schedule.alphas_cumprod
    y = torch.randn(16, 2, generator=g)
    for t in range(59, -1, -1):
        eps = model.predict(y, torch.full((16,), t)).eps
        y = (y - betas[t] / (1 - abar[t]).sqrt() * eps) / alphas[t].sqrt()
        if t > 0:
            y = y + betas[t].sqrt() * torch.randn(16, 2, generator=g)
        y = y.float()
    torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)


def test_respaced_ddpm_timesteps_and_bad_steps() -> None:
    model = gaussian_model(100)
    sampler = ddpmkit.create("sampler", "ddpm", steps=10, spacing="trailing")
    assert sampler.timesteps(model) == ddim_timesteps(100, 10, "trailing")
    seen: list[SamplerStep] = []
    x = sampler.sample(model, (4, 2), callback=seen.append, generator=gen(0))
    # the last step (index 9 -> x_0) is noiseless: x is that step's x0_hat
    assert [s.t for s in seen][-1] == 9 and torch.equal(x, seen[-1].x0)
    with pytest.raises(ddpmkit.ConfigError, match="ddpm: steps = 200 exceeds"):
        ddpmkit.create("sampler", "ddpm", steps=200).check(CheckContext(model=model))


# -- DPM-Solver++ -------------------------------------------------------------------------------


def test_dpm_solver_reproduces_gaussian_data_in_20_steps() -> None:
    """DPM-Solver++(2M), 20 logSNR-uniform steps: N(MU, S^2 I) up to sampling error and a
    small discretisation bias (measured with 20000 draws: std 0.508, 1.6% over; 0.502 at 50
    steps; 0.40 at 5). Tolerances as for the other samplers: mean 0.03 (SE 0.0056 plus the
    prior mismatch ~0.005 the ODE carries to x_0), std 0.02 (SE 0.004 plus the bias). The
    default trailing spacing ends with a jump from index 49 of this linear schedule straight
    to x0_hat and under-disperses by 4% (std 0.479), so it gets a band of its own."""
    model = gaussian_model()
    trailing = ddpmkit.create("sampler", "dpm-solver++", steps=20).sample(
        model, (8000, 2), generator=gen(0)
    )
    torch.testing.assert_close(trailing.mean(0), MU, atol=0.03, rtol=0)
    assert ((trailing.std(0) > 0.46) & (trailing.std(0) < 0.50)).all(), trailing.std(0)
    x = ddpmkit.create("sampler", "dpm-solver++", steps=20, spacing="logsnr").sample(
        model, (8000, 2), generator=gen(0)
    )
    torch.testing.assert_close(x.mean(0), MU, atol=0.03, rtol=0)
    torch.testing.assert_close(x.std(0), torch.full((2,), S), atol=0.02, rtol=0)


def test_dpm_solver_same_seed_same_samples_and_deterministic_given_x_T() -> None:
    model = gaussian_model(100)
    sampler = ddpmkit.create("sampler", "dpm-solver++", steps=8)
    a = sampler.sample(model, (16, 2), generator=gen(3))
    b = sampler.sample(model, (16, 2), generator=gen(3))
    c = sampler.sample(model, (16, 2), generator=gen(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    x_T = torch.randn(16, 2, generator=gen(5))
    d = sampler.sample(model, (16, 2), x_T=x_T, generator=gen(1))
    e = sampler.sample(model, (16, 2), x_T=x_T, generator=gen(2))
    assert torch.equal(d, e)


def test_dpm_solver_is_the_same_for_eps_x0_and_v_models() -> None:
    """The gmm oracle outputs each parameterization's exact target, so the three models share
    x0_hat up to float32 rounding of the conversions, and so do the samples."""
    x_T = torch.randn(256, 2, generator=gen(2))
    sampler = ddpmkit.create("sampler", "dpm-solver++", steps=10)
    eps, x0, v = (sampler.sample(gmm_model(p), (256, 2), x_T=x_T) for p in ("eps", "x0", "v"))
    torch.testing.assert_close(x0, eps, rtol=0, atol=1e-3)
    torch.testing.assert_close(v, eps, rtol=0, atol=1e-3)


def test_dpm_solver_first_step_is_ddim_and_the_last_returns_x0_hat() -> None:
    """Without history a step is first order, DPM-Solver++(1) = DDIM with eta = 0 (Lu et al.
    2022, section 4.1); the step onto x_0 returns x0_hat; the second step extrapolates."""
    model = gaussian_model(100)
    solver = ddpmkit.create("sampler", "dpm-solver++", steps=10)
    ddim = ddpmkit.create("sampler", "ddim", steps=10)
    x_t = torch.randn(4, 2, generator=gen(0))
    pred = model.predict(x_t, torch.full((4,), 90))
    table = model.alphas_cumprod64.tolist()
    first = solver.step(model, pred, x_t, 90, 80, None, abar=table)
    torch.testing.assert_close(first, ddim.step(model, pred, x_t, 90, 80, None, abar=table))
    # second step, 80 -> 70, with r = h_1 / h_2: D = (1 + 1/(2r)) x0_80 - 1/(2r) x0_90
    pred2 = model.predict(first, torch.full((4,), 80))
    second = solver.step(model, pred2, first, 80, 70, None, abar=table, previous=(90, pred.x0))
    lam = 0.5 * model.schedule.log_snr
    abar = model.schedule.alphas_cumprod
    h1, h2 = lam[80] - lam[90], lam[70] - lam[80]
    D = (1 + h2 / (2 * h1)) * pred2.x0 - h2 / (2 * h1) * pred.x0
    expected = ((1 - abar[70]) / (1 - abar[80])).sqrt() * first - abar[70].sqrt() * (
        torch.exp(-h2) - 1
    ) * D
    torch.testing.assert_close(second, expected.float(), rtol=1e-5, atol=1e-6)
    last = solver.step(model, pred2, first, 80, -1, None, abar=table, previous=(90, pred.x0))
    assert torch.equal(last, pred2.x0)


def test_dpm_solver_logsnr_steps() -> None:
    """S distinct indices from T-1 to 0, close to uniform in lambda where lambda is dense."""
    schedule = ddpmkit.create("schedule", "linear", timesteps=1000)
    for steps in (1, 2, 5, 10, 20, 100, 1000):
        ts = logsnr_timesteps(schedule.log_snr, steps, "dpm-solver++")
        assert len(ts) == steps and ts == sorted(set(ts), reverse=True) and ts[0] == 999
    lam = 0.5 * schedule.log_snr[logsnr_timesteps(schedule.log_snr, 10, "dpm-solver++")]
    h = lam.diff()
    torch.testing.assert_close(h, torch.full_like(h, float(h.mean())), atol=0.05, rtol=0)
    with pytest.raises(ddpmkit.ConfigError, match="dpm-solver\\+\\+: steps = 2000 exceeds"):
        ddpmkit.create("sampler", "dpm-solver++", steps=2000).check(
            CheckContext(model=gaussian_model())
        )


def test_dpm_solver_logsnr_range() -> None:
    """logsnr_min / logsnr_max: index T-1 first, then S-1 indices uniform in lambda between
    the two bounds (to within the nearest index's lambda)."""
    schedule = ddpmkit.create("schedule", "cosine", timesteps=1000)
    log_snr = schedule.log_snr
    for steps in (2, 5, 20, 100, 1000):
        ts = logsnr_timesteps(log_snr, steps, "dpm-solver++", -5.0, 7.0)
        assert len(ts) == steps and ts == sorted(set(ts), reverse=True) and ts[0] == 999
    ts = logsnr_timesteps(log_snr, 20, "dpm-solver++", -5.0, 7.0)
    lam = 0.5 * log_snr[ts[1:]]
    # the nearest index is within half an index's lambda step, < 0.02 here
    assert lam[0].item() == pytest.approx(-2.5, abs=0.02)
    assert lam[-1].item() == pytest.approx(3.5, abs=0.02)
    h = lam.diff()
    torch.testing.assert_close(h, torch.full_like(h, 6.0 / 18), atol=0.04, rtol=0)
    # a lower bound below lambda_{T-1} changes nothing
    assert logsnr_timesteps(log_snr, 20, "x", -100.0) == logsnr_timesteps(log_snr, 20, "x")
    with pytest.raises(ddpmkit.ConfigError, match="x: the log-SNR range .* is empty"):
        logsnr_timesteps(log_snr, 20, "x", 30.0)
    with pytest.raises(ddpmkit.ConfigError, match="need spacing = 'logsnr'"):
        ddpmkit.create("sampler", "dpm-solver++", logsnr_min=-5.0)
    with pytest.raises(ddpmkit.ConfigError, match="logsnr_min must be less than logsnr_max"):
        ddpmkit.create("sampler", "dpm-solver++", spacing="logsnr", logsnr_min=5, logsnr_max=1)


def test_dpm_solver_callback_and_clipping() -> None:
    model = gaussian_model(50)  # data mean 1.5: unclipped x0 predictions exceed 1
    seen: list[SamplerStep] = []
    sampler = ddpmkit.create("sampler", "dpm-solver++", steps=6, clip_x0=True)
    x = sampler.sample(model, (64, 2), callback=seen.append)
    assert [s.index for s in seen] == list(range(6)) and all(s.total == 6 for s in seen)
    assert [s.t for s in seen] == sampler.timesteps(model)
    assert all(s.x0.abs().max() <= 1.0 for s in seen)
    assert x.abs().max() <= 1.0 + 1e-6


# -- thresholding -------------------------------------------------------------------------------


def test_dynamic_threshold_by_hand() -> None:
    """Row 1: |x0| sorted 0.1, 0.5, 2, 3; its 0.75 quantile (linear interpolation) is
    2 + 0.25 (3 - 2) = 2.25 = s, so x0 <- clamp(x0, -2.25, 2.25) / 2.25. Row 2: the quantile
    is below 1, so s = 1 and x0 is unchanged."""
    x0 = torch.tensor([[0.5, -3.0, 2.0, 0.1], [0.1, -0.2, 0.3, 0.4]])
    out = dynamic_threshold(x0, 0.75)
    expected = torch.tensor([[0.5 / 2.25, -1.0, 2.0 / 2.25, 0.1 / 2.25], [0.1, -0.2, 0.3, 0.4]])
    torch.testing.assert_close(out, expected)
    # per sample over all of its dimensions, for image-shaped x0 too
    image = x0.reshape(2, 1, 2, 2)
    torch.testing.assert_close(dynamic_threshold(image, 0.75), expected.reshape(2, 1, 2, 2))


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpm-solver++"])
def test_dynamic_thresholding_in_every_sampler(name: str) -> None:
    """x0_hat stays in [-1, 1] and eps is re-derived from it: the callback's x0 is the one the
    step used."""
    model = gaussian_model(50)
    seen: list[SamplerStep] = []
    sampler = ddpmkit.create("sampler", name, steps=5, dynamic_threshold=True)
    x = sampler.sample(model, (32, 2), callback=seen.append, generator=gen(0))
    assert all(s.x0.abs().max() <= 1.0 + 1e-6 for s in seen)
    assert torch.isfinite(x).all()
    plain = ddpmkit.create("sampler", name, steps=5).sample(model, (32, 2), generator=gen(0))
    assert not torch.allclose(x, plain)
    # the thresholded prediction carries a matching eps: x_t = alpha x0 + sigma eps
    t = torch.full((32,), 30)
    x_t = torch.randn(32, 2, generator=gen(1)) * 3
    pred = sampler.threshold(model, model.predict(x_t, t), x_t, t)
    alpha, sigma = model.alpha_sigma(t, 2)
    torch.testing.assert_close(alpha * pred.x0 + sigma * pred.eps, x_t)
