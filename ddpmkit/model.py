"""DiffusionModel: schedule + parameterization + denoiser (+ conditioner), and the DDPM maths."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ddpmkit.interfaces import (
    Conditioner,
    Conditioning,
    Denoiser,
    Guidance,
    NoiseSchedule,
    Parameterization,
    PredictFn,
    Prediction,
)

LossWeighting = Callable[[torch.Tensor, "DiffusionModel"], torch.Tensor]
"""``(t, model) -> w_t`` of shape ``(B,)``: a per-timestep weight on the regression loss."""


def broadcast(values: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """Gather ``values[t]`` and shape it ``(B, 1, ..., 1)`` to broadcast against ``ndim`` dims."""
    return values[t].reshape(t.shape[0], *([1] * (ndim - 1)))


class DiffusionModel(nn.Module):
    """A denoising diffusion probabilistic model (Ho et al. 2020).

    Owns, once each: the forward process q(x_t | x_0), the posterior q(x_{t-1} | x_t, x_0),
    the conversion of the network output to eps and x0, and the training loss. The schedule's
    float64 tensors are stored as float32 buffers, so ``model.to(device)`` moves them once and
    no sampling step re-creates them.
    """

    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    betas: torch.Tensor
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_log_variance_clipped: torch.Tensor
    posterior_mean_coef1: torch.Tensor
    posterior_mean_coef2: torch.Tensor

    def __init__(
        self,
        schedule: NoiseSchedule,
        denoiser: Denoiser,
        parameterization: Parameterization,
        conditioner: Conditioner | None = None,
    ) -> None:
        super().__init__()
        self.schedule = schedule
        denoiser.bind(schedule)
        self.denoiser = denoiser
        self.parameterization = parameterization
        self.conditioner = conditioner

        abar = schedule.alphas_cumprod
        abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
        betas = schedule.betas
        # beta~_t = (1 - abar_{t-1}) / (1 - abar_t) * beta_t   (Ho et al. eq. 7)
        posterior_variance = (1.0 - abar_prev) / (1.0 - abar) * betas
        # mu~_t = coef1 * x_0 + coef2 * x_t                      (Ho et al. eq. 7)
        coef1 = abar_prev.sqrt() * betas / (1.0 - abar)
        coef2 = schedule.alphas.sqrt() * (1.0 - abar_prev) / (1.0 - abar)
        # beta~ at index 0 is 0; log uses beta~ of index 1 there (as in Ho et al.'s code)
        log_var = torch.log(torch.cat([posterior_variance[1:2], posterior_variance[1:]]))

        def buf(name: str, value: torch.Tensor) -> None:
            self.register_buffer(name, value.to(torch.float32), persistent=False)

        buf("alphas_cumprod", abar)
        buf("alphas_cumprod_prev", abar_prev)
        buf("betas", betas)
        buf("sqrt_alphas_cumprod", abar.sqrt())
        buf("sqrt_one_minus_alphas_cumprod", (1.0 - abar).sqrt())
        buf("posterior_variance", posterior_variance)
        buf("posterior_log_variance_clipped", log_var)
        buf("posterior_mean_coef1", coef1)
        buf("posterior_mean_coef2", coef2)

    @property
    def T(self) -> int:
        """Number of training timesteps."""
        return self.schedule.T

    # -- forward process ---------------------------------------------------------------------

    def alpha_sigma(self, t: torch.Tensor, ndim: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sqrt(abar_t), sqrt(1 - abar_t))`` shaped to broadcast against ``ndim`` dims."""
        alpha = broadcast(self.sqrt_alphas_cumprod, t, ndim)
        sigma = broadcast(self.sqrt_one_minus_alphas_cumprod, t, ndim)
        return alpha, sigma

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Sample q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) (Ho et al. eq. 4)."""
        alpha, sigma = self.alpha_sigma(t, x0.ndim)
        return alpha * x0 + sigma * eps

    def q_mean_variance(
        self, x0: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of q(x_t | x_0) (Ho et al. eq. 4); variance is ``(B, 1, ...)``."""
        alpha, sigma = self.alpha_sigma(t, x0.ndim)
        return alpha * x0, sigma**2

    def q_posterior(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0) (Ho et al. eq. 6-7)."""
        mean = (
            broadcast(self.posterior_mean_coef1, t, x_t.ndim) * x0
            + broadcast(self.posterior_mean_coef2, t, x_t.ndim) * x_t
        )
        variance = broadcast(self.posterior_variance, t, x_t.ndim)
        log_variance = broadcast(self.posterior_log_variance_clipped, t, x_t.ndim)
        return mean, variance, log_variance

    # -- reverse process ---------------------------------------------------------------------

    def predict(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None
    ) -> Prediction:
        """Run the denoiser and convert its output to eps and x0 via the parameterization."""
        output = self.denoiser(x_t, t, cond)
        alpha, sigma = self.alpha_sigma(t, x_t.ndim)
        channels = x_t.shape[1]
        eps, x0 = self.parameterization.to_eps_x0(output[:, :channels], x_t, alpha, sigma)
        return Prediction(eps=eps, x0=x0, output=output)

    def encode(self, raw: object) -> Conditioning | None:
        """Encode raw conditions with the conditioner (``None`` when there is none)."""
        if self.conditioner is None or raw is None:
            return None
        return self.conditioner(raw)

    # -- training objective ------------------------------------------------------------------

    def loss(
        self,
        x0: torch.Tensor,
        cond: Conditioning | None = None,
        *,
        t: torch.Tensor | None = None,
        eps: torch.Tensor | None = None,
        weighting: LossWeighting | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """L_simple (Ho et al. eq. 14, Algorithm 1), optionally weighted per timestep.

        ``t`` and ``eps`` default to fresh draws (uniform over 0..T-1 and N(0, I)) from
        ``generator``; returns the scalar mean over the batch.
        """
        batch = x0.shape[0]
        # Algorithm 1, line 3: t ~ Uniform({1, ..., T})  (indices 0..T-1 here)
        if t is None:
            t = torch.randint(0, self.T, (batch,), generator=generator, device="cpu")
            t = t.to(x0.device)
        # line 4: eps ~ N(0, I)
        if eps is None:
            eps = randn_like(x0, generator)
        # line 5: regress the parameterization's target at x_t = sqrt(abar) x0 + sqrt(1-abar) eps
        x_t = self.q_sample(x0, t, eps)
        alpha, sigma = self.alpha_sigma(t, x0.ndim)
        target = self.parameterization.target(x0, eps, alpha, sigma)
        output = self.denoiser(x_t, t, cond)[:, : x0.shape[1]]
        per_sample = (output.float() - target.float()).pow(2).flatten(1).mean(dim=1)
        if weighting is not None:
            per_sample = per_sample * weighting(t, self).to(per_sample.dtype)
        return per_sample.mean()


def randn(
    shape: Sequence[int],
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise of ``shape`` on ``device``, drawn from ``generator``.

    The draw happens on the generator's own device and is then moved, so a CPU generator gives
    the same numbers whichever device the model is on: one seed, one sample.
    """
    source = generator.device if generator is not None else device
    noise = torch.randn(tuple(shape), generator=generator, device=source, dtype=dtype)
    return noise.to(device) if device is not None else noise


def randn_like(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal noise shaped like ``x`` (see :func:`randn`)."""
    return randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def x0_from_eps(
    x_t: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor
) -> torch.Tensor:
    """x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)  (Ho et al. eq. 4 solved for x_0)."""
    return (x_t - sigma * eps) / alpha


def eps_from_x0(
    x_t: torch.Tensor, x0: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor
) -> torch.Tensor:
    """eps = (x_t - sqrt(abar_t) x_0) / sqrt(1 - abar_t)  (Ho et al. eq. 4 solved for eps)."""
    return (x_t - alpha * x0) / sigma


def guided_predict(
    model: DiffusionModel, guidance: Guidance | Sequence[Guidance] | None
) -> PredictFn:
    """The model's prediction function wrapped by each guidance in turn (first is innermost)."""
    predict: PredictFn = model.predict
    if guidance is None:
        return predict
    for g in [guidance] if isinstance(guidance, Guidance) else guidance:
        predict = functools.partial(_guided, g, model, predict)
    return predict


def _guided(
    g: Guidance,
    model: DiffusionModel,
    inner: PredictFn,
    x_t: torch.Tensor,
    t: torch.Tensor,
    cond: Conditioning | None,
) -> Prediction:
    return g.guide(model, inner, x_t, t, cond)
