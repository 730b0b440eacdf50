"""The DDPM maths of the core and the bundled schedules, parameterizations and samplers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import ddpmkit
from ddpmkit import Conditioning, Denoiser, DiffusionModel, SimpleObjective

SCHEDULES = [("linear", {}), ("cosine", {}), ("linear", {"timesteps": 50})]


class LinearDenoiser(Denoiser):
    """A tiny differentiable denoiser: a 1x1 conv on x_t plus a learned per-step bias."""

    def __init__(self, channels: int = 2, timesteps: int = 1000) -> None:
        super().__init__()
        self.channels = channels
        self.conv = nn.Conv2d(channels, channels, 1)
        self.bias = nn.Embedding(timesteps, channels)

    @property
    def in_channels(self) -> int:
        return self.channels

    @property
    def out_channels(self) -> int:
        return self.channels

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None
    ) -> torch.Tensor:
        return self.conv(x_t) + self.bias(t)[:, :, None, None]


def make_model(
    schedule: str = "linear", parameterization: str = "eps", **params: int
) -> DiffusionModel:
    sched = ddpmkit.create("schedule", schedule, **params)
    torch.manual_seed(0)
    return DiffusionModel(
        schedule=sched,
        denoiser=LinearDenoiser(timesteps=sched.T),
        parameterization=ddpmkit.create("parameterization", parameterization),
    ).double()


@pytest.mark.parametrize(("name", "params"), SCHEDULES)
def test_abar_strictly_decreasing_in_unit_interval(name: str, params: dict) -> None:
    s = ddpmkit.create("schedule", name, **params)
    abar = s.alphas_cumprod
    assert abar.shape == (s.T,) and s.betas.shape == (s.T,)
    assert torch.all(abar[1:] < abar[:-1])
    assert torch.all((abar > 0) & (abar <= 1))
    # abar_t is the running product of alpha_t = 1 - beta_t
    torch.testing.assert_close(torch.cumprod(1 - s.betas, 0), abar, rtol=1e-12, atol=0)
    torch.testing.assert_close(s.log_snr, torch.log(abar / (1 - abar)))


def test_linear_schedule_matches_ho_et_al() -> None:
    s = ddpmkit.create("schedule", "linear", timesteps=1000)
    torch.testing.assert_close(s.betas[[0, -1]], torch.tensor([1e-4, 0.02], dtype=torch.float64))
    # Ho et al. report abar_T ~ 4e-5 at T = 1000; scaling by 1000/T keeps T = 250 close to it
    short = ddpmkit.create("schedule", "linear", timesteps=250)
    torch.testing.assert_close(
        short.betas[[0, -1]], torch.tensor([4e-4, 0.08], dtype=torch.float64)
    )
    assert 1e-5 < short.alphas_cumprod[-1] < 1e-4


def test_cosine_schedule_matches_closed_form() -> None:
    s = ddpmkit.create("schedule", "cosine", timesteps=1000)
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 100, 500, 900):  # unclipped region: abar_t = f(t + 1) / f(0)
        assert s.alphas_cumprod[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-10)
    assert s.betas.max().item() == pytest.approx(0.999)  # the clip bites at the last step


def test_q_sample_closed_form_equals_composition_of_single_steps() -> None:
    """q(x_t|x_0) = N(sqrt(abar_t) x0, (1-abar_t) I) equals T single steps (mean and variance)."""
    model = make_model("cosine", timesteps=40)
    T = model.T
    # propagate mean m and variance v of x_t through q(x_t|x_{t-1}) = N(sqrt(1-b) x, b I)
    x0 = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    mean, var = x0.clone(), torch.zeros(())
    for t in range(T):
        beta = model.betas.double()[t]
        mean = torch.sqrt(1 - beta) * mean
        var = (1 - beta) * var + beta
        m, v = model.q_mean_variance(x0, torch.full((3,), t))
        # float32 buffers: relative error ~1e-6 accumulated over 40 steps
        torch.testing.assert_close(m, mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(v.flatten(), var.expand(3), rtol=1e-5, atol=1e-6)
    # and the sample uses exactly that mean and standard deviation
    eps = torch.randn_like(x0)
    t = torch.full((3,), T - 1)
    m, v = model.q_mean_variance(x0, t)
    torch.testing.assert_close(model.q_sample(x0, t, eps), m + v.sqrt() * eps)


def test_q_sample_statistics_by_monte_carlo() -> None:
    model = make_model("linear", timesteps=100)
    x0 = torch.full((200_000, 1, 1, 1), 0.7, dtype=torch.float64)
    t = torch.full((x0.shape[0],), 30)
    xt = model.q_sample(x0, t, torch.randn_like(x0))
    abar = model.alphas_cumprod[30].item()
    # 200k draws: standard error of the mean ~ 0.0022, of the variance ~ 0.003
    assert xt.mean().item() == pytest.approx(math.sqrt(abar) * 0.7, abs=0.01)
    assert xt.var().item() == pytest.approx(1 - abar, abs=0.01)


def test_posterior_mean_and_variance_against_formulas() -> None:
    model = make_model("linear", timesteps=100)
    abar = model.schedule.alphas_cumprod
    betas = model.schedule.betas
    x0 = torch.randn(5, 2, 3, 3, dtype=torch.float64)
    xt = torch.randn_like(x0)
    for t in (1, 2, 50, 99):
        tt = torch.full((5,), t)
        mean, var, log_var = model.q_posterior(x0, xt, tt)
        a_t, a_prev, b = abar[t], abar[t - 1], betas[t]
        # Ho et al. eq. 7
        expected_mean = (a_prev.sqrt() * b / (1 - a_t)) * x0 + (
            (1 - b).sqrt() * (1 - a_prev) / (1 - a_t)
        ) * xt
        expected_var = (1 - a_prev) / (1 - a_t) * b
        torch.testing.assert_close(mean, expected_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(var.flatten()[0], expected_var, rtol=1e-5, atol=0)
        torch.testing.assert_close(log_var.flatten()[0], expected_var.log(), rtol=1e-5, atol=0)
    # at the first step the posterior is a point mass at x0
    mean, var, _ = model.q_posterior(x0, xt, torch.zeros(5, dtype=torch.long))
    torch.testing.assert_close(mean, x0)
    assert var.abs().max() == 0


def test_posterior_is_the_bayes_update_of_the_forward_process() -> None:
    """Posterior mean equals the eps-form 1/sqrt(alpha)(x_t - beta/sqrt(1-abar) eps) (eq. 11)."""
    model = make_model("cosine", timesteps=200)
    x0 = torch.randn(4, 2, 3, 3, dtype=torch.float64)
    eps = torch.randn_like(x0)
    t = torch.tensor([1, 10, 100, 199])
    xt = model.q_sample(x0, t, eps)
    mean, _, _ = model.q_posterior(x0, xt, t)
    alpha = model.schedule.alphas[t].view(-1, 1, 1, 1)
    beta = model.schedule.betas[t].view(-1, 1, 1, 1)
    abar = model.schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
    eps_form = (xt - beta / (1 - abar).sqrt() * eps) / alpha.sqrt()
    torch.testing.assert_close(mean, eps_form, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["eps", "x0", "v"])
def test_parameterization_round_trips(name: str) -> None:
    """target -> to_eps_x0 recovers the eps and x0 that made x_t, for every t."""
    p = ddpmkit.create("parameterization", name)
    model = make_model("cosine", timesteps=1000)
    x0 = torch.randn(6, 2, 4, 4, dtype=torch.float64)
    eps = torch.randn_like(x0)
    t = torch.tensor([0, 1, 250, 500, 900, 999])
    alpha, sigma = model.alpha_sigma(t, x0.ndim)
    xt = alpha * x0 + sigma * eps
    eps_hat, x0_hat = p.to_eps_x0(p.target(x0, eps, alpha, sigma), xt, alpha, sigma)
    torch.testing.assert_close(eps_hat, eps, rtol=1e-6, atol=1e-6)
    # x0 from eps divides by sqrt(abar), ~5e-5 at t = 999: float32 buffers cost ~1e-7 / 5e-5
    torch.testing.assert_close(x0_hat, x0, rtol=1e-6, atol=1e-2 if name == "eps" else 1e-6)


def test_v_parameterization_matches_salimans_ho() -> None:
    p = ddpmkit.create("parameterization", "v")
    x0, eps = torch.randn(2, 3), torch.randn(2, 3)
    phi = torch.tensor([[0.3], [1.2]])  # alpha = cos(phi), sigma = sin(phi)
    v = p.target(x0, eps, phi.cos(), phi.sin())
    # v = d z_phi / d phi for z_phi = cos(phi) x0 + sin(phi) eps (Salimans & Ho, eq. 10)
    torch.testing.assert_close(v, -phi.sin() * x0 + phi.cos() * eps)


@pytest.mark.parametrize("name", ["eps", "x0", "v"])
def test_predict_is_consistent_with_q_sample(name: str) -> None:
    model = make_model("linear", name, timesteps=100)
    xt = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    t = torch.tensor([3, 40, 99])
    pred = model.predict(xt, t)
    alpha, sigma = model.alpha_sigma(t, xt.ndim)
    # whatever the parameterization, x_t = sqrt(abar) x0_hat + sqrt(1 - abar) eps_hat
    torch.testing.assert_close(alpha * pred.x0 + sigma * pred.eps, xt)


def test_loss_is_l_simple() -> None:
    model = make_model("linear", timesteps=100)
    x0 = torch.randn(4, 2, 3, 3, dtype=torch.float64)
    eps = torch.randn_like(x0)
    t = torch.tensor([0, 5, 50, 99])
    expected = (eps - model.denoiser(model.q_sample(x0, t, eps), t)).pow(2).mean()
    loss = SimpleObjective().loss(model, x0, None, {"t": t, "eps": eps})
    torch.testing.assert_close(loss, expected.float())
    # a weighting multiplies each example's error before the batch mean

    class OnlyFive(ddpmkit.LossWeighting):
        def weights(self, t: torch.Tensor, model: DiffusionModel) -> torch.Tensor:
            return (t == 5).double()

    weighted = SimpleObjective(weighting=OnlyFive()).loss(model, x0, None, {"t": t, "eps": eps})
    per = (eps - model.denoiser(model.q_sample(x0, t, eps), t)).pow(2).flatten(1).mean(1)
    torch.testing.assert_close(weighted, (per[1] / 4).float(), check_dtype=False)


def test_loss_trains_a_model() -> None:
    """Gradient steps on L_simple reduce it: the loss is wired to the parameters."""
    model = make_model("linear", timesteps=100).float()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(64, 2, 2, 2, generator=gen) * 0.1 + 0.5
    eval_t = torch.arange(64) % 100
    eval_eps = torch.randn(x0.shape, generator=gen)
    objective = SimpleObjective()
    at_eval = {"t": eval_t, "eps": eval_eps}
    before = objective.loss(model, x0, None, at_eval).item()
    for _ in range(200):
        opt.zero_grad()
        objective.batch_loss(model, x0, generator=gen).backward()
        opt.step()
    assert objective.loss(model, x0, None, at_eval).item() < 0.7 * before
