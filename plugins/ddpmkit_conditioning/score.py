"""Guiding a prediction by the gradient of a log-density: the step classifier guidance and CLIP
guidance share (Dhariwal & Nichol 2021, section 4; Nichol et al. 2022, GLIDE section 2.3).

A guidance computes ``grad = grad_x log p(y | x_t)`` with :func:`input_gradient` and applies
it with its scale s through the prediction, in one of two forms:

* ``score`` (:func:`guide_eps`): eps~ = eps - sqrt(1 - abar_t) s grad, Algorithm 2; right for
  DDIM and every other sampler, as it guides the score the sampler integrates;
* ``mean-shift`` (:func:`shift_mean`): the eps that moves the ancestral (``ddpm``) step's mean
  by exactly s Sigma_t grad, Algorithm 1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol

import torch

from ddpmkit import DiffusionModel, Prediction, column, posterior_mean_coefficients, x0_from_eps

ScoreForm = Literal["score", "mean-shift"]
"""How a guidance applies its score: eps~ (Algorithm 2) or the ancestral mean (Algorithm 1)."""


def input_gradient(
    objective: Callable[[torch.Tensor], torch.Tensor], x_t: torch.Tensor
) -> torch.Tensor:
    """grad_x sum_b objective(x)_b at ``x_t`` (``objective``: ``(B, ...) -> (B,)``, row b
    depending on row b of x only), shaped like ``x_t``.

    Works while the sampler runs under ``torch.inference_mode`` or ``torch.no_grad``: the
    gradient is taken on a fresh leaf cloned from ``x_t`` outside inference mode.
    """
    with torch.inference_mode(False), torch.enable_grad():
        # a leaf that records its graph, even when x_t is an inference tensor
        x = x_t.detach().clone().requires_grad_()
        (grad,) = torch.autograd.grad(objective(x).sum(), x)
    return grad.to(x_t.dtype)


def guide_eps(
    model: DiffusionModel,
    pred: Prediction,
    x_t: torch.Tensor,
    t: torch.Tensor,
    grad: torch.Tensor,
    scale: float,
) -> Prediction:
    """eps~ = eps - sqrt(1 - abar_t) s grad (Dhariwal & Nichol 2021, eq. 14 and Algorithm 2).

    ``grad`` is grad_x log p(y | x_t) and ``scale`` s; since eps = -sqrt(1 - abar_t) grad_x
    log p(x_t), eps~ is the eps of p(x_t) p(y | x_t)^s. x0 is re-derived from eps~.
    """
    alpha, sigma = model.alpha_sigma(t, x_t.ndim)
    # eps~ = eps - sqrt(1 - abar_t) s grad_x log p(y | x_t)
    eps = pred.eps - sigma * scale * grad
    return Prediction(eps=eps, x0=x0_from_eps(x_t, eps, alpha, sigma), output=pred.output)


def shift_mean(
    model: DiffusionModel,
    pred: Prediction,
    x_t: torch.Tensor,
    t: torch.Tensor,
    grad: torch.Tensor,
    scale: float,
) -> Prediction:
    """mu~ = mu + s Sigma_t grad (Dhariwal & Nichol 2021, Algorithm 1), as the eps that gives it.

    ``grad`` is grad_x log p(y | x_t) and ``scale`` s. The ancestral step's mean is mu =
    mu~_t(x_t, x0) (``model.p_mean_variance``) and Sigma_t is the model's reverse variance,
    both for the step t -> t-1: the shift is exact on the full chain (``ddpm`` with all T
    steps); on a respaced chain the mean of t -> s moves by a multiple of s Sigma_t grad.
    """
    s = t - 1
    ndim, dtype = x_t.ndim, x_t.dtype
    # Sigma_t: the model's variance of p(x_{t-1} | x_t) (its variance component, or beta_t)
    variance = model.reverse_log_variance(pred, x_t, t, s).exp()
    # mu = c_0 x0 + c_t x_t with x0 = (x_t - sigma_t eps) / alpha_t (Ho et al. eq. 7 and 4)
    c_0 = column(posterior_mean_coefficients(model.abar_at(t), model.abar_at(s))[0], ndim)
    alpha, sigma = model.alpha_sigma(t, ndim)
    # so d mu / d eps = -c_0 sigma_t / alpha_t: this eps~ moves mu by exactly s Sigma_t grad
    eps = pred.eps - alpha / (c_0.to(dtype) * sigma) * variance * (scale * grad)
    return Prediction(eps=eps, x0=x0_from_eps(x_t, eps, alpha, sigma), output=pred.output)


class ScoreStep(Protocol):
    """:func:`guide_eps` or :func:`shift_mean`."""

    def __call__(
        self,
        model: DiffusionModel,
        pred: Prediction,
        x_t: torch.Tensor,
        t: torch.Tensor,
        grad: torch.Tensor,
        scale: float,
    ) -> Prediction: ...


SCORE_FORMS: dict[str, ScoreStep] = {"score": guide_eps, "mean-shift": shift_mean}
"""The function applying a score in each :data:`ScoreForm`."""
