"""The learnable schedule (Kingma et al. 2021): the bound as loss, its gradients, training."""

from __future__ import annotations

import math

import pytest
import torch

import ddpmkit
from ddpmkit import ConfigError, DiffusionModel, VLBObjective
from ddpmkit.app.cli import main
from ddpmkit.app.pipeline import load_model_from_checkpoint

D = 2  # data dimensions


def make_model(schedule: ddpmkit.NoiseSchedule, variance: str = "fixed-small") -> DiffusionModel:
    torch.manual_seed(0)
    return DiffusionModel(
        schedule=schedule,
        denoiser=ddpmkit.create(
            "denoiser", "mlp", in_channels=D, out_channels=D, hidden=16, layers=2
        ),
        parameterization=ddpmkit.create("parameterization", "eps"),
        variance=ddpmkit.create("variance", variance),
        decoder="gaussian",
    )


def bound_loss(
    model: DiffusionModel, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, eps_0: torch.Tensor
) -> torch.Tensor:
    """The variational bound's loss at the given t, eps and eps_0."""
    return VLBObjective().loss(model, x0, None, {"t": t, "eps": eps, "eps_0": eps_0})


def learned(**params: object) -> ddpmkit.LearnableSchedule:
    schedule = ddpmkit.create("schedule", "learned", **params)
    assert isinstance(schedule, ddpmkit.LearnableSchedule)
    return schedule


def test_learned_schedule_starts_linear_in_log_snr_between_its_end_points() -> None:
    s = learned(timesteps=100, log_snr_max=10.0, log_snr_min=-6.0, hidden=32)
    assert s.log_snr[0].item() == pytest.approx(10.0, abs=1e-5)
    assert s.log_snr[-1].item() == pytest.approx(-6.0, abs=1e-5)
    steps = s.log_snr[1:] - s.log_snr[:-1]
    assert torch.all(steps < 0)
    # the network starts at softplus(-6) ~ 0.0025 of the linear part: nearly linear
    torch.testing.assert_close(steps, torch.full_like(steps, -16.0 / 99), rtol=0.02, atol=0)
    ends, shape = s.log_snr_at(torch.arange(100))
    assert torch.equal(ends, shape)
    torch.testing.assert_close(torch.sigmoid(ends.double()), s.alphas_cumprod)


def test_ends_and_shape_are_differentiable_in_disjoint_parameters() -> None:
    s = learned(timesteps=10, hidden=8)
    ends, shape = s.log_snr_at(torch.tensor([3, 7]))
    end_params = {"gamma_0", "log_gap"}
    for values, wanted in ((ends, end_params), (shape, None)):
        s.zero_grad()
        values.sum().backward()
        touched = {n for n, p in s.named_parameters() if p.grad is not None and p.grad.any()}
        assert touched == (wanted if wanted else {n for n, _ in s.named_parameters()} - end_params)


def test_vlb_loss_averaged_over_t_is_the_bound_of_vlb_terms() -> None:
    """mean over t = 1..T-1 of (T-1) L_{t-1} + L_0 + L_T, with vlb_terms' own noise, is
    sum_t L_t + L_T: the estimator is unbiased, exactly."""
    T = 6
    for schedule in (ddpmkit.create("schedule", "cosine", timesteps=T), learned(timesteps=T)):
        model = make_model(schedule)
        x0 = torch.randn(5, D)
        terms, prior = model.vlb_terms(x0, generator=torch.Generator().manual_seed(1))
        bound = model.bits_per_dim(terms.sum(1) + prior, x0).mean()
        noise = torch.Generator().manual_seed(1)
        eps = [ddpmkit.randn_like(x0, noise) for _ in range(T)]  # vlb_terms' draws, in order
        with torch.no_grad():
            losses = [
                bound_loss(model, x0, torch.full((5,), index), eps[index], eps[0])
                for index in range(1, T)
            ]
        # float32 network and buffers versus the float64 path: agree to 1e-5 relative
        torch.testing.assert_close(torch.stack(losses).mean(), bound, rtol=1e-5, atol=0)
    with pytest.raises(ValueError, match="t must lie in 1 .. T-1"):
        bound_loss(model, x0, torch.zeros(5, dtype=torch.long), eps[0], eps[0])


def test_vlb_loss_gradients_end_points_on_the_bound_shape_on_its_variance() -> None:
    """Against an independent closed form (Kingma et al. eq. 13 with sigma^2 = beta~):
    (T-1) L_{t-1} = (T-1)/2 expm1(lambda_s - lambda_t) ||eps - eps_hat||^2, the prior KL and
    the Gaussian decoder's L_0."""
    T = 8
    # float64 throughout: the end points' gradient is a sum of cancelling terms (moving
    # gamma_0 moves the whole curve), which float32 leaves with ~1% error
    model = make_model(learned(timesteps=T, hidden=16)).double()
    schedule = model.schedule
    assert isinstance(schedule, ddpmkit.LearnableSchedule)
    x0, eps, eps_0 = torch.randn(3, 6, D, dtype=torch.float64)
    t = torch.tensor([1, 2, 3, 5, 6, 7])
    model.zero_grad()
    bound_loss(model, x0, t, eps, eps_0).backward()
    got = {n: p.grad.clone() for n, p in schedule.named_parameters()}

    def reference() -> tuple[torch.Tensor, torch.Tensor]:
        def lam(index: torch.Tensor) -> torch.Tensor:
            ends, shape = schedule.log_snr_at(index)
            return ends + shape - shape.detach()  # every parameter, plain gradient

        lam_t, lam_s = lam(t), lam(t - 1)
        abar = torch.sigmoid(lam_t).unsqueeze(1)
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
        eps_hat = model.denoiser(x_t, t, None)
        nats = 0.5 * torch.expm1(lam_s - lam_t) * (eps - eps_hat).pow(2).sum(1)
        diffusion = (T - 1) * nats / (D * math.log(2))
        abar_T = torch.sigmoid(lam(torch.full_like(t, T - 1))).unsqueeze(1)
        prior = 0.5 * (abar_T * x0**2 + (1 - abar_T) - 1 - torch.log(1 - abar_T)).sum(1)
        # L_0: Gaussian decoder N(x0_hat, beta~ of index 1) at x_1 = alpha_1 x0 + sigma_1 eps_0
        lam_1, lam_2 = lam(torch.zeros_like(t)), lam(torch.ones_like(t))
        abar_1, abar_2 = torch.sigmoid(lam_1).unsqueeze(1), torch.sigmoid(lam_2).unsqueeze(1)
        x_1 = abar_1.sqrt() * x0 + (1 - abar_1).sqrt() * eps_0
        x0_hat = (x_1 - (1 - abar_1).sqrt() * model.denoiser(x_1, 0 * t, None)) / abar_1.sqrt()
        var = ((1 - abar_1) / (1 - abar_2) * (1 - abar_2 / abar_1)).detach()  # the clip
        decoder = (0.5 * (x0 - x0_hat) ** 2 / var + 0.5 * torch.log(2 * math.pi * var)).sum(1)
        return diffusion, (prior + decoder) / (D * math.log(2))

    diffusion, prior = reference()
    assert bound_loss(model, x0, t, eps, eps_0).item() == pytest.approx(
        (diffusion + prior).mean().item(), rel=1e-9
    )
    schedule.zero_grad()
    (diffusion + prior).mean().backward()
    for name in ("gamma_0", "log_gap"):
        torch.testing.assert_close(
            got[name], schedule.get_parameter(name).grad, rtol=1e-3, atol=1e-6
        )
    schedule.zero_grad()
    diffusion, _ = reference()
    diffusion.pow(2).mean().backward()
    for name, param in schedule.named_parameters():
        if name not in ("gamma_0", "log_gap"):
            assert param.grad is not None and param.grad.abs().max() > 0
            torch.testing.assert_close(got[name], param.grad, rtol=1e-7, atol=1e-12)


class GaussianDenoiser(ddpmkit.Denoiser):
    """The exact eps-predictor for data N(0, s^2 I) under the schedule's current abar_t:
    eps_hat = sigma_t x_t / (abar_t s^2 + sigma_t^2) (a Gaussian posterior mean)."""

    s2 = 0.25

    def bind(self, schedule: ddpmkit.NoiseSchedule, parameterization: object) -> None:
        self.schedule = schedule

    @property
    def in_channels(self) -> int:
        return D

    @property
    def out_channels(self) -> int:
        return D

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: object = None) -> torch.Tensor:
        abar = self.schedule.alphas_cumprod.to(x_t)[t].unsqueeze(1)
        return (1 - abar).sqrt() * x_t / (abar * self.s2 + 1 - abar)


def test_training_the_shape_lowers_the_variance_of_the_bound_estimate() -> None:
    """The exact denoiser of Gaussian data errs little at low SNR and much at high SNR, so
    on a log-SNR-linear schedule T L_t varies a lot with t. Adam on the shape's gradient of
    E[(T L_t)^2], end points fixed, spreads the steps to even the terms out and lowers
    Var[T L_t] (Kingma et al. 2021, section 5.3) while the bound itself barely moves."""
    T = 50
    model = DiffusionModel(
        schedule=learned(timesteps=T, hidden=32, learn_ends=False, log_snr_max=8.0),
        denoiser=GaussianDenoiser(),
        parameterization=ddpmkit.create("parameterization", "eps"),
        variance=ddpmkit.create("variance", "fixed-small"),
        decoder="gaussian",
    )
    x0 = torch.randn(8192, D, generator=torch.Generator().manual_seed(0)) * 0.5
    noise = torch.Generator().manual_seed(0)

    def spread() -> tuple[float, float]:
        with torch.no_grad():
            t = 1 + torch.arange(x0.shape[0]) % (T - 1)  # L_0 is the end point's alone
            eps = ddpmkit.randn_like(x0, torch.Generator().manual_seed(1))
            x_t = model.q_sample(x0, t, eps)
            terms = model.T * model.bits_per_dim(
                model.vlb_term(x0, x_t, t, model.predict(x_t, t)), x0
            )
        return terms.var().item(), terms.mean().item()

    before = spread()
    optimizer = torch.optim.Adam(model.schedule.parameters(), lr=0.05)
    for _ in range(200):
        optimizer.zero_grad()
        VLBObjective().batch_loss(model, x0[:512], generator=noise).backward()
        optimizer.step()
        model.refresh_schedule()
    after = spread()
    assert after[0] < 0.5 * before[0], (before, after)
    assert after[1] == pytest.approx(before[1], rel=0.1), (before, after)


TRAIN_LEARNED = (
    ('type = "linear"\ntimesteps = 40', 'type = "learned"\ntimesteps = 40\nhidden = 16'),
)


def test_pipeline_trains_saves_and_reloads_a_learned_schedule(write_pipeline) -> None:
    path = write_pipeline(*TRAIN_LEARNED)
    assert main(["run", str(path)]) == 0
    (run,) = (path.parent / "runs").iterdir()
    model = load_model_from_checkpoint(run / "checkpoints" / "step-0000006.safetensors")
    schedule = model.schedule
    assert isinstance(schedule, ddpmkit.LearnableSchedule)
    initial = learned(timesteps=40, hidden=16)
    assert not torch.equal(schedule.alphas_cumprod, initial.alphas_cumprod)  # it trained
    # the tables the samplers read are those of the loaded (EMA) parameters
    with torch.no_grad():
        abar = torch.sigmoid(schedule.log_snr_at(torch.arange(40))[0].double())
    torch.testing.assert_close(model.alphas_cumprod64, abar)
    torch.testing.assert_close(schedule.alphas_cumprod, abar)


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ("vlb_weight = 0.001\n", "train.vlb_weight"),
        ('[train.weighting]\ntype = "p2"\n', "train.weighting"),
    ],
)
def test_learned_schedule_refuses_other_objectives(write_pipeline, capsys, extra, key) -> None:
    path = write_pipeline(*TRAIN_LEARNED)
    text = path.read_text().replace("[train]\n", "[train]\n" + extra, 1)
    if extra.startswith("[train.weighting]"):
        text = path.read_text() + "\n" + extra
    path.write_text(text)
    assert main(["validate", str(path)]) == 2
    assert key in capsys.readouterr().err


def test_learned_schedule_end_points_must_be_ordered() -> None:
    with pytest.raises(ConfigError, match="log_snr_min must be less than log_snr_max"):
        ddpmkit.create("schedule", "learned", log_snr_max=-1.0, log_snr_min=2.0)
