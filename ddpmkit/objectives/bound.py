"""The variational bound as the loss, which trains a learnable schedule (Kingma et al. 2021)."""

from __future__ import annotations

from typing import Any

import torch

from ddpmkit.core.errors import ConfigError
from ddpmkit.core.interfaces import NoiseSchedule
from ddpmkit.core.model import DiffusionModel, randn
from ddpmkit.core.training import Draws, Generators, TrainingObjective
from ddpmkit.core.values import Conditioning
from ddpmkit.core.wiring import CheckContext


class VLBObjective(TrainingObjective):
    """The variational bound as the loss, (T-1) L_{t-1} + L_0 + L_T per example in bits per
    dimension, t ~ U{1, ..., T-1} (Kingma et al. 2021, eq. 11 and 13); the batch mean.

    L_0 and L_T are computed for every example, as Kingma et al. do: L_0 is one network call
    at index 0, and weighting it by T with the other terms would make it dominate the
    estimate's variance. With a learnable schedule the end points get the bound's gradient and
    the shape the gradient of E[((T-1) L_{t-1})^2], which, with the bound's mean fixed, is its
    variance (section 5.3).
    """

    def check(self, context: CheckContext) -> None:
        """The bound as a loss needs T >= 2 (a one-step chain's bound is L_0 + L_T)."""
        if context.model.T < 2:
            raise ConfigError("the variational bound as a loss needs T >= 2")

    def draw(
        self,
        model: DiffusionModel,
        batch_size: int,
        example_shape: tuple[int, ...],
        generators: Generators,
    ) -> Draws:
        """``t`` by a low-discrepancy draw (one uniform offset, then B evenly spread indices;
        Appendix I.1), and ``eps`` and ``eps_0``, the noises of x_t and of x at index 0."""
        T = model.T
        # t: stratified over {1, ..., T-1}, one random offset for the whole batch
        u = torch.rand((), generator=generators.indices)
        strata = (u + torch.arange(batch_size, dtype=torch.float64) / batch_size) % 1.0
        t = 1 + (strata * (T - 1)).long().clamp(max=T - 2)
        shape = (batch_size, *example_shape)
        eps = randn(shape, generator=generators.noise)
        eps_0 = randn(shape, generator=generators.noise)
        return {"t": t, "eps": eps, "eps_0": eps_0}

    def loss(
        self, model: DiffusionModel, x0: torch.Tensor, cond: Conditioning | None, draws: Draws
    ) -> torch.Tensor:
        """The batch mean of the bound's estimate at ``t`` (in 1 .. T-1), ``eps``, ``eps_0``."""
        t, eps, eps_0, T = draws["t"], draws["eps"], draws["eps_0"], model.T
        if not bool(((t >= 1) & (t < T)).all()):
            raise ValueError(f"the variational bound's loss: t must lie in 1 .. T-1 = {T - 1}")
        lookup = _LogSnrLookup(model.schedule, T, x0.device)
        with model.reading_abar(lookup):
            # L_{t-1} at x_t ~ q(x_t | x_0), weighted by the T - 1 terms it stands for
            x_t = model.q_sample(x0, t, eps)
            kl = model.vlb_term(x0, x_t, t, model.predict(x_t, t, cond))
            diffusion = (T - 1) * model.bits_per_dim(kl, x0)
            # L_0 = -log p(x_0 | x at index 0) and the prior L_T, for every example
            first = torch.zeros_like(t)
            x_first = model.q_sample(x0, first, eps_0)
            decoder = model.vlb_term(x0, x_first, first, model.predict(x_first, first, cond))
            ends = model.bits_per_dim(decoder + model.prior_kl(x0), x0)
        # the shape's gradient becomes d D^2 = 2 D dD, D = (T-1) L_{t-1}, per example
        lookup.scale = 2.0 * diffusion.detach()
        return (diffusion + ends).mean()


class _LogSnrLookup:
    """abar at per-example indices, differentiable in a learnable schedule's parameters.

    The schedule's log SNR is evaluated once at every index; each lookup gathers ``(B,)``
    values, one per example, so the gradient reaching the shape can be rescaled per example
    by ``scale`` (set once the loss is known, read by the backward pass). A fixed schedule's
    values have no gradient to rescale.
    """

    def __init__(self, schedule: NoiseSchedule, T: int, device: torch.device) -> None:
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
