"""The variational bound, reverse variances (fixed, learned, analytic) and the hybrid loss."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import GaussianOracle
from torch import nn

import ddpmkit
from ddpmkit import Conditioning, Denoiser, DiffusionModel
from ddpmkit.core.likelihood import discretized_gaussian_log_likelihood, normal_kl

MU, S = 0.3, 0.5  # 1D data x0 ~ N(MU, S^2)


def gaussian_model(
    timesteps: int, variance: str | None = None, schedule: str = "linear"
) -> DiffusionModel:
    # the data are unbounded, but |x0 - MU| < 3 almost surely: Var[x0 | x_t] <= S^2 << 3^2
    params = {"data_half_range": 3.0} if variance == "analytic" else {}
    return DiffusionModel(
        ddpmkit.create("schedule", schedule, timesteps=timesteps),
        GaussianOracle([MU], S),
        ddpmkit.create("parameterization", "eps"),
        variance=ddpmkit.create("variance", variance, **params) if variance else None,
        decoder="gaussian",
    ).double()


def data(n: int, seed: int = 0) -> torch.Tensor:
    return MU + S * torch.randn(n, 1, generator=torch.Generator().manual_seed(seed)).double()


def true_nll(x0: torch.Tensor) -> torch.Tensor:
    return 0.5 * math.log(2 * math.pi * S**2) + (x0[:, 0] - MU) ** 2 / (2 * S**2)


def test_normal_kl_closed_form_and_monte_carlo() -> None:
    m1, lv1, m2, lv2 = (torch.tensor(v).double() for v in (0.3, -0.5, -0.2, 0.4))
    x = m1 + (0.5 * lv1).exp() * torch.randn(400_000, generator=torch.Generator().manual_seed(0))
    log_p = -0.5 * (lv1 + (x - m1) ** 2 / lv1.exp())
    log_q = -0.5 * (lv2 + (x - m2) ** 2 / lv2.exp())
    # 400k draws of log p - log q (std ~0.7): standard error ~0.001
    assert normal_kl(m1, lv1, m2, lv2).item() == pytest.approx(
        (log_p - log_q).mean().item(), abs=5e-3
    )
    assert normal_kl(m1, lv1, m1, lv1).item() == 0.0


def test_discretized_decoder_is_a_distribution_over_the_256_values() -> None:
    values = torch.linspace(-1, 1, 256).double()
    for mean, log_scale in [(0.0, -3.0), (0.9, -1.0), (-0.97, -5.0)]:
        log_p = discretized_gaussian_log_likelihood(
            values, torch.tensor(mean).double(), torch.tensor(log_scale).double()
        )
        assert log_p.exp().sum().item() == pytest.approx(1.0, abs=1e-6)


def test_analytic_variance_is_the_true_reverse_variance_for_gaussian_data() -> None:
    """For Gaussian data q(x_{t-1}|x_t) is Gaussian; Analytic-DPM must find its variance
    beta~_t + coef_x0^2 Var[x0 | x_t], Var[x0 | x_t] = S^2 s^2 / (a^2 S^2 + s^2)."""
    model = gaussian_model(100, "analytic")
    model.variance.params = model.variance.Params(num_examples=20000, data_half_range=3.0)
    model.variance.fit(model, [data(20000)])
    abar = model.schedule.alphas_cumprod
    t = torch.arange(1, 100)
    a2, s2 = abar[t], 1 - abar[t]
    # Gamma_t = E||eps_hat||^2 = s^2 / (a^2 S^2 + s^2); 20000 draws of a scaled chi-square:
    # relative standard error sqrt(2 / 20000) = 1%, so 5% covers the worst of 99 timesteps
    torch.testing.assert_close(model.variance.gamma[t], s2 / (a2 * S**2 + s2), rtol=0.05, atol=0)
    beta, beta_tilde = model.step_variances(t, t - 1)
    coef_x0 = abar[t - 1].sqrt() * beta / (1 - abar[t])
    expected = beta_tilde + coef_x0**2 * S**2 * s2 / (a2 * S**2 + s2)
    log_var = model.variance.log_variance(model, t, t - 1, None, torch.zeros(99, 1).double())
    log_var = log_var.flatten()
    torch.testing.assert_close(log_var.exp(), expected, rtol=0.02, atol=0)


def vlb_nats(model: DiffusionModel, x0: torch.Tensor) -> torch.Tensor:
    terms, prior = model.vlb_terms(x0, generator=torch.Generator().manual_seed(1))
    return terms.sum(1) + prior


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_vlb_bounds_the_nll_and_is_tight_with_the_exact_reverse_process(schedule: str) -> None:
    """VLB - NLL = KL(q(x_1:T | x_0) || p(x_1:T | x_0)) >= 0, and 0 when p is the true reverse
    process, which for Gaussian data is Gaussian: exact mean (oracle) and analytic variance."""
    x0 = data(4000)
    nll = true_nll(x0)
    gaps = {}
    for variance in ("fixed-large", "fixed-small", "analytic"):
        model = gaussian_model(200, variance, schedule)
        model.variance.fit(model, [data(20000, seed=9)])
        gap = vlb_nats(model, x0) - nll
        # the VLB is estimated with one x_t per term and example: judge the mean gap by its own
        # standard error (3 SE: a false failure about one run in 700)
        se = gap.std().item() / math.sqrt(len(gap))
        gaps[variance] = (gap.mean().item(), se)
        assert gap.mean().item() > -3 * se, (variance, gaps)
    mean, se = gaps["analytic"]
    assert abs(mean) < 3 * se + 0.005, gaps
    assert mean < min(gaps["fixed-large"][0], gaps["fixed-small"][0]), gaps


def test_learned_range_interpolates_between_beta_and_beta_tilde() -> None:
    model = gaussian_model(50, "learned-range")
    t = torch.tensor([1, 10, 49])
    log_beta, log_beta_tilde = model.step_log_variances(t, t - 1)
    x = torch.zeros(3, 1).double()
    for v, expected in [(1.0, log_beta), (-1.0, log_beta_tilde)]:
        log_var = model.variance.log_variance(model, t, t - 1, torch.full((3, 1), v).double(), x)
        torch.testing.assert_close(log_var.flatten(), expected)
    with pytest.raises(ValueError, match="needs 1 extra output channels"):
        model.variance.log_variance(model, t, t - 1, None, x)


class TwoHeads(Denoiser):
    """Separate parameters for the mean channel and the variance channel."""

    def __init__(self) -> None:
        super().__init__()
        self.mean_head = nn.Linear(1, 1)
        self.var_head = nn.Linear(1, 1)

    @property
    def in_channels(self) -> int:
        return 1

    @property
    def out_channels(self) -> int:
        return 2

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None
    ) -> torch.Tensor:
        return torch.cat([self.mean_head(x_t), torch.tanh(self.var_head(x_t))], dim=1)


def test_hybrid_loss_trains_the_variance_only_through_the_vlb() -> None:
    """L_hybrid = L_simple + lambda L_vlb with a stop-gradient on the mean (Nichol & Dhariwal)."""
    torch.manual_seed(0)
    model = DiffusionModel(
        ddpmkit.create("schedule", "cosine", timesteps=100),
        TwoHeads(),
        ddpmkit.create("parameterization", "eps"),
        variance=ddpmkit.create("variance", "learned-range"),
        decoder="gaussian",
    )
    x0, t = torch.randn(64, 1), torch.randint(0, 100, (64,))
    eps = torch.randn(64, 1)

    def grads(vlb_weight: float) -> dict[str, torch.Tensor]:
        model.zero_grad()
        objective = ddpmkit.diffusion_objective(model, vlb_weight=vlb_weight)
        objective.loss(model, x0, None, {"t": t, "eps": eps}).backward()
        return {
            n: p.grad.clone() if p.grad is not None else None for n, p in model.named_parameters()
        }

    simple, hybrid = grads(0.0), grads(0.001)
    torch.testing.assert_close(
        hybrid["denoiser.mean_head.weight"], simple["denoiser.mean_head.weight"]
    )
    assert (
        simple["denoiser.var_head.weight"] is None
        or simple["denoiser.var_head.weight"].abs().max() == 0
    )
    assert hybrid["denoiser.var_head.weight"].abs().max() > 0
    # and the VLB term is lambda T L_t in bits per dimension
    with torch.no_grad():
        out = model.denoiser(model.q_sample(x0, t, eps), t)
        pred = model.prediction_from_output(out, model.q_sample(x0, t, eps), t)
        term = model.vlb_term(x0, model.q_sample(x0, t, eps), t, pred) / math.log(2)
        mse = (out[:, :1] - eps).pow(2).mean(1)
        expected = (mse + 0.001 * 100 * term).mean()
    hybrid = ddpmkit.HybridObjective(ddpmkit.objectives.HybridParams(vlb_weight=0.001))
    loss = hybrid.loss(model, x0, None, {"t": t, "eps": eps})
    assert loss.item() == pytest.approx(expected.item())


class Constant(Denoiser):
    """A poor network: predicts eps = 0.3 everywhere."""

    @property
    def in_channels(self) -> int:
        return 1

    @property
    def out_channels(self) -> int:
        return 1

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None
    ) -> torch.Tensor:
        return torch.full_like(x_t, 0.3)


def test_the_default_objective_follows_the_weighting_vlb_weight_and_schedule() -> None:
    """One place picks a model's diffusion loss: L_simple (with the weighting), L_hybrid when
    vlb_weight > 0, the bound for a schedule that trains on it (and nothing else with it)."""
    fixed = gaussian_model(10, schedule="cosine")
    p2 = ddpmkit.create("weighting", "p2")
    simple = ddpmkit.diffusion_objective(fixed, p2)
    assert type(simple) is ddpmkit.SimpleObjective and simple.weighting is p2
    hybrid = ddpmkit.diffusion_objective(fixed, vlb_weight=0.001)
    assert isinstance(hybrid, ddpmkit.HybridObjective) and hybrid.params.vlb_weight == 0.001
    learned = DiffusionModel(
        ddpmkit.create("schedule", "learned", timesteps=10, hidden=4),
        GaussianOracle([MU], S),
        ddpmkit.create("parameterization", "eps"),
    )
    assert type(ddpmkit.diffusion_objective(learned)) is ddpmkit.VLBObjective
    for extra in ({"weighting": p2}, {"vlb_weight": 0.001}):
        with pytest.raises(ddpmkit.ConfigError, match="learned on the variational bound"):
            ddpmkit.diffusion_objective(learned, **extra)  # type: ignore[arg-type]


def test_refreshing_a_fixed_schedule_rebuilds_nothing() -> None:
    model = gaussian_model(10, schedule="cosine")
    tables = model.alphas_cumprod
    model.refresh_schedule()
    model.load_state_dict(model.state_dict())  # the load hook refreshes too
    assert model.alphas_cumprod is tables


def test_image_bounds_clip_the_predicted_x0_to_the_data_range() -> None:
    """With the discretized decoder (data in [-1, 1]) the bound is evaluated with x0_hat
    clamped, as Ho et al. do; where abar_t is tiny an unclipped x0_hat = (x_t - s eps) / a is
    huge and the last KL term explodes."""
    model = DiffusionModel(
        ddpmkit.create("schedule", "cosine", timesteps=50),
        Constant(),
        ddpmkit.create("parameterization", "eps"),
        variance=ddpmkit.create("variance", "fixed-small"),
    )
    x0 = (torch.randint(0, 256, (64, 1)) / 127.5 - 1).float()
    clipped, _ = model.vlb_terms(x0, generator=torch.Generator().manual_seed(0))
    raw, _ = model.vlb_terms(x0, generator=torch.Generator().manual_seed(0), clip_x0=False)
    assert clipped[:, -1].mean() < 0.01 * raw[:, -1].mean()
    # continuous data have no range: the Gaussian decoder's bound is not clipped by default
    model.decoder = "gaussian"
    default, _ = model.vlb_terms(x0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(default[:, 1:], raw[:, 1:])
