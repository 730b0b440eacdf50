"""Samplers driven by the exact ``gmm-oracle`` reproduce a Gaussian mixture; DDIM inverts.

The data: three well separated 2D components with unequal weights and anisotropic
covariances (eigenvalues 0.025 .. 0.104), each mean at least 4 standard deviations (along the
line joining them) from the half-way boundary to its neighbours, so nearest-mode assignment
misplaces ~1e-4 of the points. The schedule is cosine with T = 300.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

import ddpmkit
from ddpmkit import DiffusionModel, SamplerStep
from ddpmkit.app.metrics import sliced_wasserstein
from ddpmkit_toy import GMMOracle

MIX = {
    "weights": [0.45, 0.3, 0.25],
    "means": [[-1.2, -0.7], [1.2, -0.7], [0.0, 1.3]],
    "covariances": [
        [[0.09, 0.03], [0.03, 0.04]],
        [[0.04, -0.02], [-0.02, 0.07]],
        [[0.08, 0.0], [0.0, 0.025]],
    ],
}
W, MU, SIGMA = (
    torch.tensor(MIX[k], dtype=torch.float64) for k in ("weights", "means", "covariances")
)
N = 8000
T = 300

SAMPLERS = {
    # name: (sampler, its params, the model's reverse variance, variance-ratio band)
    "ddpm-beta": ("ddpm", {}, None, (1.00, 1.04)),
    "ddpm-beta-tilde": ("ddpm", {}, "fixed-small", (0.91, 0.99)),
    "ddim-eta0": ("ddim", {"steps": 100}, None, (0.90, 0.98)),
    "ddim-eta1": ("ddim", {"steps": 150, "eta": 1.0}, None, (0.85, 0.96)),
}
"""The band holds the variance ratio Var(sample) / Var(data) each sampler reaches along any
eigen-direction of the components: its discretisation bias. Measured with 100k draws of single
Gaussians with variances 0.025 .. 0.104 (standard error 0.005) under this schedule: beta
over-disperses by 1.4 - 2.1%; beta~ under-disperses by 3 - 7%; DDIM's Euler steps (100 of
them) by 4 - 8%; eta = 1 (DDPM with beta~ on 150 strided steps) by 6 - 13%. The bias is
largest for the narrowest directions and shrinks as the steps grow (O(1/S))."""


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@functools.cache
def model(variance: str | None = None) -> DiffusionModel:
    return DiffusionModel(
        ddpmkit.create("schedule", "cosine", timesteps=T),
        ddpmkit.create("denoiser", "gmm-oracle", **MIX),
        ddpmkit.create("parameterization", "eps"),
        variance=ddpmkit.create("variance", variance) if variance else None,
        decoder="gaussian",
    )


def oracle() -> GMMOracle:
    denoiser = model().denoiser
    assert isinstance(denoiser, GMMOracle)
    return denoiser


@functools.cache
def samples(key: str) -> torch.Tensor:
    """N draws of the sampler ``key`` (shared by the tests of this module)."""
    name, params, variance, _ = SAMPLERS[key]
    sampler = ddpmkit.create("sampler", name, **params)
    return sampler.sample(model(variance), (N, 2), generator=gen(0))


@pytest.mark.parametrize("key", list(SAMPLERS))
def test_sampler_reproduces_the_mixture(key: str) -> None:
    """Per mode (nearest mean): its weight, mean and covariance.

    * weight: binomial SE sqrt(w (1 - w) / N) <= 0.0056; 4 SE + 0.005 of discretisation.
    * mean: SE sqrt(Sigma_ii / n_k) <= 0.007 (n_k >= 2000); 4 SE + 0.005 (the bias measured
      with single Gaussians is <= 0.003).
    * covariance: the generalized eigenvalues r of (C_hat, Sigma) (variance ratios along the
      extreme directions) lie in the sampler's band; for n Gaussian draws the sample values
      differ from the population ones by about N(0, 1/n) plus a Rayleigh(1/sqrt(n)) spread,
      so the band is widened by 5 / sqrt(n_k) (~0.1 here).
    """
    x = samples(key).double()
    assert torch.isfinite(x).all()
    lo, hi = SAMPLERS[key][3]
    nearest = torch.cdist(x, MU).argmin(dim=1)
    for k in range(3):
        mode = x[nearest == k]
        n = mode.shape[0]
        weight = n / N
        assert abs(weight - W[k]) < 4 * math.sqrt(W[k] * (1 - W[k]) / N) + 0.005, (k, weight)
        se = (SIGMA[k].diagonal() * hi / n).sqrt()
        assert ((mode.mean(0) - MU[k]).abs() < 4 * se + 0.005).all(), (k, mode.mean(0))
        ratios = torch.linalg.eigvals(torch.linalg.solve(SIGMA[k], torch.cov(mode.T))).real
        slack = 5 / math.sqrt(n)
        assert ((ratios > lo - slack) & (ratios < hi + slack)).all(), (k, ratios)


@functools.cache
def reference() -> torch.Tensor:
    """N fresh data points every sample is compared with."""
    return oracle().mixture.sample(N, gen(11))


def sw_to_reference(x: torch.Tensor) -> float:
    return float(sliced_wasserstein(x, reference(), 128, p=1, generator=gen(0)))


@functools.cache
def null_sw() -> float:
    """SW_1 between fresh data and the reference, averaged over four fresh samples."""
    return sum(sw_to_reference(oracle().mixture.sample(N, gen(20 + i))) for i in range(4)) / 4


@pytest.mark.parametrize("key", list(SAMPLERS))
def test_sliced_wasserstein_to_fresh_data_is_at_the_noise_floor(key: str) -> None:
    """SW_1 between the sampler's N points and N fresh data points is close to SW_1 between two
    fresh samples, which is pure sampling noise (~0.02 for N = 8000, varying 0.012 - 0.028
    over seeds). Against the mean of four such null values the samplers must stay below
    twice as much; a mixture with one weight 0.05 off gives ~0.08, DDIM with 10 steps ~0.05.
    """
    assert sw_to_reference(samples(key)) < 2 * null_sw()


def test_ddim_inversion_round_trip() -> None:
    """Encode with DDIM inversion, decode with eta = 0 on the same 100 steps.

    Both directions are Euler steps of one ODE, so x_0 comes back up to O(1/S) discretisation
    error: 0.02 on average, 0.05 at most for the 87% of points within Mahalanobis distance 2
    of their mean (bound 0.08), and the mean error roughly halves from 50 to 100 steps. In
    the empty space between modes the flow map is ill-conditioned (nearby x_T decode to
    different modes), so a few of those points may not come back (0.8% measured; bound 2%).
    """
    mixture = oracle().mixture
    x0, k = mixture.sample_labelled(2000, gen(3))
    d = x0.double() - mixture.means[k]
    mahalanobis = torch.einsum("ni,nij,nj->n", d, torch.linalg.inv(mixture.covariances[k]), d)
    core = mahalanobis.sqrt() < 2.0
    sampler = ddpmkit.create("sampler", "ddim", steps=100)
    errors = {}
    for steps in (50, 100):
        x_T = sampler.invert(model(), x0, steps=steps)
        back = ddpmkit.create("sampler", "ddim", steps=steps).sample(model(), x0.shape, x_T=x_T)
        errors[steps] = (back - x0).norm(dim=1)
    err = errors[100]
    assert float(err[core].max()) < 0.08 and float(err.mean()) < 0.03
    assert float((err > 0.1).float().mean()) < 0.02
    assert float(err.mean()) < 0.75 * float(errors[50].mean())
    # x_T is the data pushed to the prior: N(0, I) up to sampling error (SE of a std 0.016)
    x_T = sampler.invert(model(), x0)
    assert float(x_T.mean(0).abs().max()) < 0.1 and float((x_T.std(0) - 1).abs().max()) < 0.06


def test_ddim_inversion_steps_and_callback() -> None:
    sampler = ddpmkit.create("sampler", "ddim", steps=10, spacing="trailing", eta=1.0)
    seen: list[SamplerStep] = []
    x0 = oracle().sample(4, gen(4))
    x_T = sampler.invert(model(), x0, callback=seen.append)
    assert [s.t for s in seen] == sorted(sampler.timesteps(model()))
    assert [s.index for s in seen] == list(range(10)) and all(s.total == 10 for s in seen)
    assert torch.equal(seen[-1].x, x_T) and torch.equal(seen[0].x0, x0)
    # eta is ignored: inversion is deterministic; steps overrides the sampler's count
    assert torch.equal(sampler.invert(model(), x0), x_T)
    seen.clear()
    sampler.invert(model(), x0, steps=5, callback=seen.append)
    assert len(seen) == 5
    with pytest.raises(ddpmkit.ConfigError, match="steps"):
        sampler.invert(model(), x0, steps=0)


def test_the_bound_is_a_bound_and_approaches_the_nll_as_T_grows() -> None:
    """L_VLB >= -log p(x_0) for the exact oracle, with the gap closing as T grows: with exact
    means and the (estimated) optimal variance only the Gaussian approximation of each
    reverse step separates them, and that vanishes as the steps shrink."""
    data = ddpmkit.create("dataset", "gmm", num_examples=8000, seed=0, **MIX)
    fit, x0 = (data.batch(list(r)).images.double() for r in (range(4000), range(4000, 8000)))
    gaps = []
    for T in (10, 1000):
        model = DiffusionModel(
            ddpmkit.create("schedule", "cosine", timesteps=T),
            ddpmkit.create("denoiser", "gmm-oracle", **MIX),
            ddpmkit.create("parameterization", "eps"),
            # |x0 - mu_k| < 1 for every mode here, so Var[x0 | x_t] <= 2.5^2 holds
            variance=ddpmkit.create("variance", "analytic", num_examples=4000, data_half_range=2.5),
            decoder="gaussian",
        ).double()
        model.variance.fit(model, [fit])
        terms, prior = model.vlb_terms(x0, generator=gen(1))
        gap = terms.sum(1) + prior + model.denoiser.log_prob(x0)
        gaps.append((gap.mean().item(), gap.std().item() / math.sqrt(len(gap))))
    # judged by each estimate's own standard error (one x_t draw per term and example)
    (coarse, coarse_se), (fine, fine_se) = gaps
    assert coarse > 3 * coarse_se and fine > -3 * fine_se, gaps
    assert coarse - fine > 3 * math.hypot(coarse_se, fine_se), gaps
