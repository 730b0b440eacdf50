"""Denoising diffusion implicit models (Song et al. 2021), eq. 12 with eta."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field

from ddpmkit import (
    Conditioning,
    ConfigError,
    DiffusionModel,
    Prediction,
    SamplerCallback,
    SamplerStep,
    randn_like,
    step_variance_formula,
    x0_from_eps,
)
from ddpmkit_samplers.chain import ChainSampler, ChainSamplerParams
from ddpmkit_samplers.spacing import SPACING_HELP, IndexSpacing, ddim_timesteps

__all__ = ["DDIMSampler", "DDIMSamplerParams", "ddim_timesteps"]


class DDIMSamplerParams(ChainSamplerParams):
    """Parameters of the ``ddim`` sampler."""

    steps: int = Field(50, ge=1, le=100_000, description="Number of sampling steps S (at most T).")
    eta: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="0 is deterministic DDIM; 1 with variance = posterior is DDPM's beta~.",
    )
    variance: Literal["posterior", "model"] = Field(
        "posterior",
        description=(
            "sigma^2 = eta^2 v with v the posterior variance beta~ of the step (Song et al. "
            "eq. 16) or the model's own reverse variance (fixed, learned or analytic)."
        ),
    )
    spacing: IndexSpacing = Field("leading", description=SPACING_HELP)


class DDIMSampler(ChainSampler):
    """x_{t-1} = sqrt(abar_{t-1}) x0 + sqrt(1 - abar_{t-1} - sigma^2) eps + sigma z (eq. 12)."""

    Params = DDIMSamplerParams
    params: DDIMSamplerParams

    def timesteps(self, model: DiffusionModel) -> list[int]:
        """S indices chosen by ``spacing``, decreasing."""
        return ddim_timesteps(model.T, self.params.steps, self.params.spacing)

    def step(
        self,
        model: DiffusionModel,
        pred: Prediction,
        x_t: torch.Tensor,
        t: int,
        t_prev: int,
        generator: torch.Generator | None,
        *,
        abar: Sequence[float],
        previous: tuple[int, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Song et al. (2021) eq. 12, with sigma_t(eta) from eq. 16, for the step t -> t_prev."""
        eta = self.params.eta
        # abar_t and abar_{t-1} (the last step lands on x_0: abar = 1), float64 host numbers
        abar_t, abar_prev = abar[t], (abar[t_prev] if t_prev >= 0 else 1.0)
        # eq. 16: sigma^2 = eta^2 v with v = beta~_{t|t-1} or the model's reverse variance,
        # at most 1 - abar_{t-1}
        sigma2: float | torch.Tensor
        if self.params.variance == "posterior":
            sigma2 = min(eta**2 * step_variance_formula(abar_t, abar_prev)[1], 1.0 - abar_prev)
        else:
            t_batch = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
            s_batch = torch.full_like(t_batch, t_prev)
            v = model.reverse_log_variance(pred, x_t, t_batch, s_batch).exp()
            sigma2 = (eta**2 * v).clamp(max=1.0 - abar_prev)
        # eq. 12: "predicted x0" + "direction pointing to x_t" + random noise
        x_prev = abar_prev**0.5 * pred.x0 + (1.0 - abar_prev - sigma2) ** 0.5 * pred.eps
        if eta > 0 and t_prev >= 0:
            x_prev = x_prev + sigma2**0.5 * randn_like(x_t, generator)
        return x_prev

    def invert(
        self,
        model: DiffusionModel,
        x0: torch.Tensor,
        *,
        cond: Conditioning | None = None,
        steps: int | None = None,
        callback: SamplerCallback | None = None,
    ) -> torch.Tensor:
        """DDIM inversion: encode x_0 into the x_T that deterministic DDIM decodes back to it.

        Song et al. 2021, section 4.3: eq. 12 with eta = 0 is an Euler step of the ODE of
        eq. 14, which can run forwards. Over the sampler's timesteps in increasing order each
        step goes from ``t_prev`` (-1: x_0 itself) to ``t`` with the eps predicted at the current
        point, x_t = sqrt(abar_t) x0_hat + sqrt(1 - abar_t) eps, where x0_hat is eps's x_0 at
        the current noise level abar_{t_prev}. As in the usual implementations the network is
        asked at index ``t`` (the step's target; there is no index for x_0), which is also the
        ``t`` the callback reports. ``steps`` overrides the sampler's step count; ``eta`` is
        ignored. Decoding the result with ``eta = 0`` and the same steps returns x_0 up to the
        discretisation error of the two Euler schemes, which shrinks as the steps grow.
        """
        if steps is not None and steps < 1:
            raise ConfigError(f"ddim: steps must be >= 1, got {steps}")
        S = self.params.steps if steps is None else steps
        ts = ddim_timesteps(model.T, S, self.params.spacing)[::-1]
        device = model.alphas_cumprod.device
        with torch.no_grad():
            x = x0.to(device)
            for i, t in enumerate(ts):
                t_prev = ts[i - 1] if i > 0 else -1
                t_batch = torch.full((x.shape[0],), t, device=device, dtype=torch.long)
                # eps at the current point x_{t_prev}, asking the network at index t
                pred = model.predict(x, t_batch, cond)
                # x0_hat at the current level abar_{t_prev}; x itself at x_0, where abar = 1
                # (thresholding would break the round trip)
                x0_hat = x
                if t_prev >= 0:
                    alpha, sigma = model.alpha_sigma(torch.full_like(t_batch, t_prev), x.ndim)
                    x0_hat = x0_from_eps(x, pred.eps, alpha, sigma)
                # eq. 12 with sigma = 0, upwards: x_t = sqrt(abar_t) x0_hat + sqrt(1 - abar_t) eps
                x = model.q_sample(x0_hat, t_batch, pred.eps)
                if callback is not None:
                    callback(SamplerStep(index=i, total=len(ts), t=t, x=x, x0=x0_hat))
        return x
