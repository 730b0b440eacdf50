"""DiffusionModel: schedule + parameterization + denoiser (+ conditioner), and the DDPM maths."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar

import torch
from torch import nn

from ddpmkit.core.interfaces import (
    Conditioner,
    Conditioning,
    Denoiser,
    Guidance,
    LearnableSchedule,
    LossWeighting,
    NoiseSchedule,
    Parameterization,
    PredictFn,
    Prediction,
    ReverseVariance,
)
from ddpmkit.core.likelihood import (
    discretized_gaussian_log_likelihood,
    gaussian_log_likelihood,
    normal_kl,
)
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


class DiffusionModel(nn.Module):
    """A denoising diffusion probabilistic model (Ho et al. 2020).

    Owns, once each: the forward process q(x_t | x_0), the posterior q(x_{t-1} | x_t, x_0),
    the conversion of the network output to eps and x0, and the training loss. The schedule's
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

        self._lookup: _LogSnrLookup | None = None
        self._set_tables(schedule.alphas_cumprod)
        if isinstance(schedule, LearnableSchedule):
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
        """Re-read a learnable schedule's abar_t after its parameters changed (an optimizer
        step, loading weights); a no-op for a fixed schedule."""
        if isinstance(self.schedule, LearnableSchedule):
            with torch.no_grad():
                self.schedule.refresh()
                self._set_tables(self.schedule.alphas_cumprod)

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

    # -- training objective ------------------------------------------------------------------

    def loss(
        self,
        x0: torch.Tensor,
        cond: Conditioning | None = None,
        *,
        t: torch.Tensor | None = None,
        eps: torch.Tensor | None = None,
        weighting: LossWeighting | None = None,
        vlb_weight: float = 0.0,
        generator: torch.Generator | None = None,
        correction: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """L_simple (Ho et al. eq. 14, Algorithm 1), weighted, plus lambda L_vlb (hybrid).

        With ``vlb_weight`` lambda > 0 this is L_hybrid = L_simple + lambda L_vlb of Nichol &
        Dhariwal (2021, section 3.1): L_vlb = T L_t in bits per dimension, with the mean's
        gradient stopped so that the VLB term only trains the variance. ``t`` and ``eps``
        default to fresh draws from ``generator``; ``correction`` (default 1) multiplies each
        example's loss, as the weighting's ``sample_t`` returns it; returns the batch mean.
        """
        if isinstance(self.schedule, LearnableSchedule):
            if weighting is not None or vlb_weight > 0:
                raise ValueError(
                    "a learnable schedule trains on the variational bound itself: "
                    "no loss weighting and no vlb_weight"
                )
            return self.vlb_loss(x0, cond, t=t, eps=eps, generator=generator)
        batch, channels = x0.shape[0], x0.shape[1]
        # Algorithm 1, line 3: t ~ Uniform({1, ..., T}) (indices 0..T-1), or the weighting's law
        if t is None:
            if weighting is not None:
                t, correction = weighting.sample_t(batch, self, generator)
            else:
                t = torch.randint(0, self.T, (batch,), generator=generator)
        t = t.to(x0.device)
        # line 4: eps ~ N(0, I)
        if eps is None:
            eps = randn_like(x0, generator)
        # line 5: regress the parameterization's target at x_t = sqrt(abar) x0 + sqrt(1-abar) eps
        alpha, sigma = self.alpha_sigma(t, x0.ndim)
        x_t = alpha * x0 + sigma * eps  # q_sample, with alpha and sigma gathered once
        target = self.parameterization.target(x0, eps, alpha, sigma)
        output = self.denoiser(x_t, t, cond)
        # (a view of the first C channels only when there are more: a slice costs a copy in
        # the backward pass)
        mean_output = output[:, :channels] if output.shape[1] > channels else output
        if weighting is None and vlb_weight == 0 and correction is None:
            # unweighted: the mean over examples of their means is the mean of every element,
            # one fused kernel each way
            return nn.functional.mse_loss(mean_output.float(), target.float())
        # the squared error per example (mse_loss's fused kernels, the same numbers as
        # (output - target).pow(2))
        squared = nn.functional.mse_loss(mean_output.float(), target.float(), reduction="none")
        error = squared.flatten(1).mean(dim=1)
        if weighting is not None:
            factor = self.parameterization.eps_error_factor(alpha, sigma).flatten()
            error = error * (weighting.weights(t, self).to(error.device) * factor).float()
        if vlb_weight > 0:
            # stop-gradient on the mean: the VLB term trains the variance channels only
            frozen = torch.cat([output[:, :channels].detach(), output[:, channels:]], dim=1)
            term = self.vlb_term(x0, x_t, t, self.prediction_from_output(frozen, x_t, t))
            error = error + vlb_weight * self.T * self.bits_per_dim(term, x0)
        if weighting is not None and weighting.observes:
            weighting.observe(t.cpu(), error.detach().cpu())
        return error.mean() if correction is None else (error * correction.to(x0.device)).mean()

    def vlb_loss(
        self,
        x0: torch.Tensor,
        cond: Conditioning | None = None,
        *,
        t: torch.Tensor | None = None,
        eps: torch.Tensor | None = None,
        eps_0: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The variational bound as the loss, (T-1) L_{t-1} + L_0 + L_T per example in bits
        per dimension, t ~ U{1, ..., T-1} (Kingma et al. 2021, eq. 11 and 13); the batch mean.

        L_0 and L_T are computed for every example, as Kingma et al. do: L_0 is one network
        call at index 0, and weighting it by T with the other terms would make it dominate
        the estimate's variance. ``t`` defaults to a low-discrepancy draw (one uniform offset,
        then B evenly spread indices; Appendix I.1). ``eps`` and ``eps_0`` are the noises of
        x_t and of x at index 0. With a learnable schedule the end points get the bound's
        gradient and the shape the gradient of E[((T-1) L_{t-1})^2], which, with the bound's
        mean fixed, is its variance (section 5.3).
        """
        batch, T = x0.shape[0], self.T
        if T < 2:
            raise ValueError("vlb_loss needs T >= 2 (a one-step chain's bound is L_0 + L_T)")
        # t: stratified over {1, ..., T-1}, one random offset for the whole batch
        if t is None:
            u = torch.rand((), generator=generator)
            strata = (u + torch.arange(batch, dtype=torch.float64) / batch) % 1.0
            t = 1 + (strata * (T - 1)).long().clamp(max=T - 2)
        elif not bool(((t >= 1) & (t < T)).all()):
            raise ValueError(f"vlb_loss: t must lie in 1 .. T-1 = {T - 1}")
        t = t.to(x0.device)
        eps = randn_like(x0, generator) if eps is None else eps
        eps_0 = randn_like(x0, generator) if eps_0 is None else eps_0
        schedule = self.schedule
        lookup = (
            _LogSnrLookup(schedule, self.T) if isinstance(schedule, LearnableSchedule) else None
        )
        self._lookup = lookup
        try:
            # L_{t-1} at x_t ~ q(x_t | x_0), weighted by the T - 1 terms it stands for
            x_t = self.q_sample(x0, t, eps)
            kl = self.vlb_term(x0, x_t, t, self.predict(x_t, t, cond))
            diffusion = (T - 1) * self.bits_per_dim(kl, x0)
            # L_0 = -log p(x_0 | x at index 0) and the prior L_T, for every example
            first = torch.zeros_like(t)
            x_first = self.q_sample(x0, first, eps_0)
            decoder = self.vlb_term(x0, x_first, first, self.predict(x_first, first, cond))
            ends = self.bits_per_dim(decoder + self.prior_kl(x0), x0)
        finally:
            self._lookup = None
        if lookup is not None:
            # the shape's gradient becomes d D^2 = 2 D dD, D = (T-1) L_{t-1}, per example
            lookup.scale = 2.0 * diffusion.detach()
        return (diffusion + ends).mean()


class _LogSnrLookup:
    """abar at per-example indices, differentiable in a learnable schedule's parameters.

    The schedule's log SNR is evaluated once at every index; each lookup gathers ``(B,)``
    values, one per example, so the gradient reaching the shape can be rescaled per example
    by ``scale`` (set once the loss is known, read by the backward pass).
    """

    def __init__(self, schedule: LearnableSchedule, T: int) -> None:
        device = next(schedule.parameters()).device
        self.ends, self.shape = schedule.log_snr_at(torch.arange(T, device=device))
        self.scale: torch.Tensor | None = None

    def abar(self, t: torch.Tensor) -> torch.Tensor:
        """abar_t = sigmoid(log SNR(t)) in float64 for indices ``t`` ``(B,)``."""
        shape = self.shape[t]
        log_snr = self.ends[t] + _ScaledGradient.apply(shape - shape.detach(), self)
        return torch.sigmoid(log_snr.to(torch.float64))


class _ScaledGradient(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by ``lookup.scale``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, lookup: _LogSnrLookup) -> torch.Tensor:
        ctx.lookup = lookup
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        scale = ctx.lookup.scale
        return (grad if scale is None else grad * scale.to(grad)), None


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
