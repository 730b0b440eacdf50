"""DiffusionModel: schedule + parameterization + denoiser (+ conditioner), and the DDPM maths."""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Literal, Protocol, TypeVar

import torch
from torch import nn

from ddpmkit.core.interfaces import Conditioner, Denoiser, Guidance, NoiseSchedule, Parameterization
from ddpmkit.core.likelihood import (
    discretized_gaussian_log_likelihood,
    gaussian_log_likelihood,
    normal_kl,
)
from ddpmkit.core.training import ReverseVariance
from ddpmkit.core.values import Conditioning, PredictFn, Prediction
from ddpmkit.core.wiring import CheckContext

Decoder = Literal["discretized", "gaussian"]
"""L_0's decoder: discretized Gaussian for 8-bit data (Ho et al. eq. 13), or a plain Gaussian."""


def column(values: torch.Tensor, ndim: int) -> torch.Tensor:
    """Shape per-example ``values`` ``(B,)`` as ``(B, 1, ..., 1)`` for ``ndim``-dim tensors."""
    return values.reshape(values.shape[0], *([1] * (ndim - 1)))


def broadcast(values: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """Gather ``values[t]`` and shape it ``(B, 1, ..., 1)`` to broadcast against ``ndim`` dims."""
    return column(values[t], ndim)


Scalar = TypeVar("Scalar", float, torch.Tensor)


def step_variance_formula(abar_t: Scalar, abar_s: Scalar) -> tuple[Scalar, Scalar]:
    """beta_{t|s} = 1 - abar_t / abar_s, beta~_{t|s} = (1 - abar_s) / (1 - abar_t) beta_{t|s}
    (Ho et al. eq. 7 for s = t - 1; Song et al. 2021 eq. 7 for any s < t); floats or tensors."""
    beta = 1.0 - abar_t / abar_s
    return beta, (1.0 - abar_s) / (1.0 - abar_t) * beta


def posterior_mean_coefficients(abar_t: Scalar, abar_s: Scalar) -> tuple[Scalar, Scalar]:
    """The weights of x_0 and x_t in mu~ of q(x_s | x_t, x_0): sqrt(abar_s) beta_{t|s} /
    (1 - abar_t) and sqrt(abar_t / abar_s) (1 - abar_s) / (1 - abar_t) (Ho et al. eq. 7)."""
    beta = step_variance_formula(abar_t, abar_s)[0]
    ratio = abar_t / abar_s
    return abar_s**0.5 * beta / (1.0 - abar_t), ratio**0.5 * (1.0 - abar_s) / (1.0 - abar_t)


class AbarLookup(Protocol):
    """abar_t at per-example indices, computed rather than read from the model's tables."""

    def abar(self, t: torch.Tensor) -> torch.Tensor:
        """abar_t in float64 for indices ``t`` ``(B,)``."""
        ...


class DiffusionModel(nn.Module):
    """A denoising diffusion probabilistic model (Ho et al. 2020).

    Owns, once each: the forward process q(x_t | x_0), the posterior q(x_{t-1} | x_t, x_0),
    the conversion of the network output to eps and x0, and the variational bound's terms
    (the losses built on them are the objectives of :mod:`ddpmkit.objectives`). The schedule's
    float64 tensors are stored as float32 buffers, so ``model.to(device)`` moves them once and
    no sampling step re-creates them.
    """

    alphas_cumprod: torch.Tensor
    alphas_cumprod64: torch.Tensor
    betas: torch.Tensor
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    posterior_variance: torch.Tensor

    def __init__(
        self,
        schedule: NoiseSchedule,
        denoiser: Denoiser,
        parameterization: Parameterization,
        conditioner: Conditioner | None = None,
        variance: ReverseVariance | None = None,
        decoder: Decoder = "discretized",
    ) -> None:
        super().__init__()
        self.schedule = schedule
        denoiser.bind(schedule, parameterization)
        self.denoiser = denoiser
        self.parameterization = parameterization
        self.conditioner = conditioner
        if conditioner is not None:
            conditioner.bind(self)

        self.variance = variance
        self.decoder: Decoder = decoder

        self._lookup: AbarLookup | None = None
        self._set_tables(schedule.alphas_cumprod)
        self._tables_of = schedule.alphas_cumprod  # the abar_t the tables were made from
        self.register_load_state_dict_post_hook(lambda module, keys: module.refresh_schedule())
        parameterization.check(CheckContext(model=self))  # eps refuses SNR(T) = 0, say

    def _set_tables(self, abar: torch.Tensor) -> None:
        """Store what the maths reads from abar_t as buffers, on the device they already use."""
        device = self.alphas_cumprod.device if hasattr(self, "alphas_cumprod") else abar.device
        abar = abar.to(device, torch.float64)
        abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
        betas = 1.0 - abar / abar_prev

        def buf(name: str, value: torch.Tensor) -> None:
            self.register_buffer(name, value.to(torch.float32), persistent=False)

        buf("alphas_cumprod", abar)
        # float64 copy for step variances: 1 - abar_t / abar_s cancels badly in float32
        self.register_buffer("alphas_cumprod64", abar.clone(), persistent=False)
        buf("sqrt_alphas_cumprod", abar.sqrt())
        buf("sqrt_one_minus_alphas_cumprod", (1.0 - abar).sqrt())
        buf("betas", betas)
        # beta~_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t (Ho et al. eq. 7), in float64 first
        posterior_variance = (1.0 - abar_prev) / (1.0 - abar) * betas
        buf("posterior_variance", posterior_variance)
        # the floor of clipped log-variances: beta~ of index 1 (a Python float: no device sync)
        self.variance_floor = float(posterior_variance[min(1, abar.numel() - 1)].clamp(min=1e-20))

    def refresh_schedule(self) -> None:
        """Re-read the schedule's abar_t after its parameters changed (an optimizer step,
        loading weights); a fixed schedule's stays the same tensor, and nothing is redone."""
        self.schedule.refresh()  # a no-grad snapshot
        if self.schedule.alphas_cumprod is not self._tables_of:
            self._set_tables(self.schedule.alphas_cumprod)
            self._tables_of = self.schedule.alphas_cumprod

    @contextlib.contextmanager
    def reading_abar(self, lookup: AbarLookup) -> Iterator[None]:
        """Within the block the maths reads abar_t from ``lookup`` instead of the tables: a
        loss differentiable in a learnable schedule's parameters (Kingma et al. 2021)."""
        self._lookup = lookup
        try:
            yield
        finally:
            self._lookup = None

    @property
    def T(self) -> int:
        """Number of training timesteps."""
        return self.schedule.T

    # -- forward process ---------------------------------------------------------------------

    def alpha_sigma(self, t: torch.Tensor, ndim: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sqrt(abar_t), sqrt(1 - abar_t))`` for indices ``t`` ``(B,)``, each ``(B, 1, ..., 1)``
        to broadcast against ``ndim`` dims."""
        if self._lookup is not None:
            abar = self._lookup.abar(t)
            dtype = self.alphas_cumprod.dtype
            return column(abar.sqrt().to(dtype), ndim), column((1.0 - abar).sqrt().to(dtype), ndim)
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

    def abar_at(self, s: torch.Tensor) -> torch.Tensor:
        """abar_s (float64) for indices ``s`` ``(B,)``, with abar_{-1} = 1 (the clean data)."""
        if self._lookup is not None:
            return torch.where(s >= 0, self._lookup.abar(s.clamp(min=0)), 1.0)
        return torch.where(s >= 0, self.alphas_cumprod64[s.clamp(min=0)], 1.0)

    def step_variances(self, t: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """beta_{t|s} = 1 - abar_t / abar_s and beta~_{t|s} = (1 - abar_s)/(1 - abar_t) beta_{t|s}.

        The forward and posterior variances of a step from index ``t`` down to ``s`` (Ho et al.
        eq. 7 for s = t - 1; Song et al. 2021 eq. 7 for any s < t), each ``(B,)``.
        """
        return step_variance_formula(self.abar_at(t), self.abar_at(s))

    def step_log_variances(
        self, t: torch.Tensor, s: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log beta_{t|s}, log beta~_{t|s})``, clipped below at log beta~ of index 1.

        beta~ is 0 on the step that lands on x_0 (s = -1); as in Ho et al.'s code it is
        replaced there by the first non-zero posterior variance so likelihoods stay finite.
        """
        beta, beta_tilde = self.step_variances(t, s)
        dtype, floor = self.alphas_cumprod.dtype, self.variance_floor
        beta_tilde = torch.where(s >= 0, beta_tilde, floor)
        return beta.clamp(min=floor).log().to(dtype), beta_tilde.log().to(dtype)

    def q_posterior(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, s: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log-variance of q(x_s | x_t, x_0), s = t - 1 by default.

        mu~ = sqrt(abar_s) beta_{t|s} / (1 - abar_t) x_0 + sqrt(abar_t / abar_s) (1 - abar_s)
        / (1 - abar_t) x_t (Ho et al. eq. 7; any s < t as in Song et al. 2021 eq. 7).
        """
        s = t - 1 if s is None else s
        beta_tilde = self.step_variances(t, s)[1]
        log_variance = column(self.step_log_variances(t, s)[1], x_t.ndim).to(x_t.dtype)
        mean = self.posterior_mean(x0, x_t, t, s)
        return mean, column(beta_tilde.to(x_t.dtype), x_t.ndim), log_variance

    def posterior_mean(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, s: torch.Tensor
    ) -> torch.Tensor:
        """mu~ of q(x_s | x_t, x_0) alone (the mean of :meth:`q_posterior`)."""
        coef_x0, coef_xt = posterior_mean_coefficients(self.abar_at(t), self.abar_at(s))
        coef_x0, coef_xt = coef_x0.to(x_t.dtype), coef_xt.to(x_t.dtype)
        return column(coef_x0, x_t.ndim) * x0 + column(coef_xt, x_t.ndim) * x_t

    # -- reverse process ---------------------------------------------------------------------

    def predict(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None
    ) -> Prediction:
        """Run the denoiser and convert its output to eps and x0 via the parameterization."""
        return self.prediction_from_output(self.denoiser(x_t, t, cond), x_t, t)

    def prediction_from_output(
        self, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> Prediction:
        """Convert a raw network output (first ``C`` channels) to eps and x0."""
        alpha, sigma = self.alpha_sigma(t, x_t.ndim)
        channels = x_t.shape[1]
        mean_output = output[:, :channels] if output.shape[1] > channels else output
        eps, x0 = self.parameterization.to_eps_x0(mean_output, x_t, alpha, sigma)
        return Prediction(eps=eps, x0=x0, output=output)

    def with_x0(
        self, pred: Prediction, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> Prediction:
        """``pred`` with x0 replaced (clipped, thresholded...) and eps made to agree with it."""
        alpha, sigma = self.alpha_sigma(t, x_t.ndim)
        return Prediction(eps=eps_from_x0(x_t, x0, alpha, sigma), x0=x0, output=pred.output)

    def reverse_log_variance(
        self, pred: Prediction, x_t: torch.Tensor, t: torch.Tensor, s: torch.Tensor
    ) -> torch.Tensor:
        """log sigma^2 of p_theta(x_s | x_t): the variance component's, or sigma^2 = beta_{t|s}
        (Ho et al. Algorithm 2) when the model has none."""
        if self.variance is None:
            return column(self.step_log_variances(t, s)[0], x_t.ndim)
        channels = x_t.shape[1]
        extra = pred.output[:, channels:] if pred.output.shape[1] > channels else None
        return self.variance.log_variance(self, t, s, extra, x_t)

    def p_mean_variance(
        self, pred: Prediction, x_t: torch.Tensor, t: torch.Tensor, s: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of p_theta(x_s | x_t), s = t - 1 by default.

        mu_theta(x_t, t) = mu~_t(x_t, x0_hat) (Ho et al. eq. 11 written through eq. 7).
        """
        s = t - 1 if s is None else s
        return self.posterior_mean(pred.x0, x_t, t, s), self.reverse_log_variance(pred, x_t, t, s)

    # -- variational bound -------------------------------------------------------------------

    def vlb_term(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, pred: Prediction
    ) -> torch.Tensor:
        """L_{t-1} = KL(q(x_{t-1}|x_t,x_0) || p_theta(x_{t-1}|x_t)) for t > 0 and
        L_0 = -log p_theta(x_0|x_1) for t = 0 (Ho et al. eq. 5, 13), in nats per example."""
        true_mean, _, true_log_var = self.q_posterior(x0, x_t, t)
        mean, log_var = self.p_mean_variance(pred, x_t, t)
        kl = normal_kl(true_mean, true_log_var, mean, log_var).flatten(1).sum(1)
        if self.decoder == "discretized":
            log_px = discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var)
        else:
            log_px = gaussian_log_likelihood(x0, mean, 0.5 * log_var)
        nll = -log_px.flatten(1).sum(1)
        return torch.where(t == 0, nll, kl)

    def prior_kl(self, x0: torch.Tensor) -> torch.Tensor:
        """L_T = KL(q(x_T | x_0) || N(0, I)) in nats per example (Ho et al. eq. 5)."""
        t = torch.full((x0.shape[0],), self.T - 1, device=x0.device, dtype=torch.long)
        mean, var = self.q_mean_variance(x0, t)
        zeros = torch.zeros_like(x0)
        return normal_kl(mean, var.log().expand_as(x0), zeros, zeros).flatten(1).sum(1)

    @torch.no_grad()
    def vlb_terms(
        self,
        x0: torch.Tensor,
        cond: Conditioning | None = None,
        *,
        generator: torch.Generator | None = None,
        callback: Callable[[int], None] | None = None,
        clip_x0: bool | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every term of L_VLB for a batch: ``(terms (B, T), prior (B,))`` in nats.

        ``terms[:, t]`` is L_{t-1} at index t (L_0 at index 0) for one draw of x_t per example;
        their sum plus the prior L_T is the bound on -log p(x_0). ``clip_x0`` (default: for
        the discretized decoder, whose data lie in [-1, 1]) clamps the predicted x0 to the data
        range before the reverse mean is formed, as Ho et al. and Nichol & Dhariwal evaluate:
        the reverse process stays Gaussian, so the bound stays a bound.
        """
        clip = self.decoder == "discretized" if clip_x0 is None else clip_x0
        terms = torch.empty(x0.shape[0], self.T, device=x0.device)
        for index in range(self.T):
            t = torch.full((x0.shape[0],), index, device=x0.device, dtype=torch.long)
            x_t = self.q_sample(x0, t, randn_like(x0, generator))
            pred = self.predict(x_t, t, cond)
            if clip:
                pred = self.with_x0(pred, pred.x0.clamp(-1.0, 1.0), x_t, t)
            terms[:, index] = self.vlb_term(x0, x_t, t, pred)
            if callback is not None:
                callback(index)
        return terms, self.prior_kl(x0)

    def bits_per_dim(self, nats: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """Convert per-example nats to bits per dimension of ``x0``."""
        return nats / (x0[0].numel() * math.log(2.0))

    def encode(self, raw: object) -> Conditioning | None:
        """Encode raw conditions with the conditioner (``None`` when there is none)."""
        if self.conditioner is None or raw is None:
            return None
        return self.conditioner(raw)


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
    return torch.addcmul(x_t, sigma, eps, value=-1.0).div_(alpha)


def eps_from_x0(
    x_t: torch.Tensor, x0: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor
) -> torch.Tensor:
    """eps = (x_t - sqrt(abar_t) x_0) / sqrt(1 - abar_t)  (Ho et al. eq. 4 solved for eps)."""
    return torch.addcmul(x_t, alpha, x0, value=-1.0).div_(sigma)


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


def noised_batch(
    model: DiffusionModel, x_0: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_t, t)``: t ~ U{0, ..., T-1} and x_t ~ q(x_t | x_0) on ``model``'s schedule (Ho et
    al. 2020, Algorithm 1, lines 3-5), drawn from ``generator``: what a noise-aware network
    (a classifier, a noised CLIP) trains on."""
    # t ~ Uniform({0, ..., T-1}), on the generator's device, then moved
    t = torch.randint(0, model.T, (x_0.shape[0],), generator=generator).to(x_0.device)
    # x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, eps ~ N(0, I)
    with torch.no_grad():
        x_t = model.q_sample(x_0, t, randn_like(x_0, generator))
    return x_t, t
