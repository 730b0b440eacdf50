"""Denoising diffusion implicit models (Song et al. 2021), eq. 12 with eta."""

from __future__ import annotations

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
    column,
    randn_like,
    step_variance_formula,
    x0_from_eps,
)
from ddpmkit_samplers.chain import ChainSampler, ChainSamplerParams, chain_key
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

    def prepare(self, model: DiffusionModel, steps: list[int]) -> None:
        """Eq. 12's three coefficients of every step, from float64 host numbers, once (and
        kept while the steps and their abar stay the same: the next chain reuses them)."""
        if self.params.variance != "posterior":
            self._coefficients: dict[tuple[int, int], tuple[torch.Tensor, ...]] = {}
            self._prepared_for = None
            return  # the model's variance may depend on the network output: per step
        key = chain_key(model, steps)
        if key == getattr(self, "_prepared_for", None):
            return
        pairs = list(zip(steps, [*steps[1:], -1], strict=True))
        rows = []
        for t, s in pairs:
            abar_t, abar_prev = model.abar_host(t), model.abar_host(s)
            # eq. 16: sigma^2 = eta^2 beta~_{t|s}, at most 1 - abar_prev
            sigma2 = min(
                self.params.eta**2 * step_variance_formula(abar_t, abar_prev)[1], 1.0 - abar_prev
            )
            rows.append((abar_prev**0.5, max(1.0 - abar_prev - sigma2, 0.0) ** 0.5, sigma2**0.5))
        # one tensor, split into 0-dim CPU tensors (scalars on any device) in three calls
        columns = [c.unbind() for c in torch.tensor(rows, dtype=torch.float32).T]
        self._coefficients = dict(zip(pairs, zip(*columns, strict=True), strict=True))
        self._prepared_for = key

    def step(
        self,
        model: DiffusionModel,
        pred: Prediction,
        x_t: torch.Tensor,
        t: int,
        t_prev: int,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """Song et al. eq. 12, with sigma_t(eta) from eq. 16."""
        coefficients = getattr(self, "_coefficients", {}).get((t, t_prev))
        if coefficients is not None:
            a, b, sigma = coefficients
            # eq. 12: "predicted x0" + "direction pointing to x_t" + random noise
            x_prev = (pred.x0 * a).addcmul_(pred.eps, b)
            if self.params.eta > 0 and t_prev >= 0:
                x_prev.addcmul_(randn_like(x_t, generator), sigma)
            return x_prev
        t_batch = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
        s_batch = torch.full_like(t_batch, t_prev)
        # the last step lands on x_0: abar_prev = 1
        abar_prev = column(model.abar_at(s_batch).to(x_t.dtype), x_t.ndim)
        # eq. 16: sigma^2 = eta^2 beta~_{t|s} = eta^2 (1 - abar_s)/(1 - abar_t) (1 - abar_t/abar_s)
        if self.params.variance == "posterior":
            v = column(model.step_variances(t_batch, s_batch)[1].to(x_t.dtype), x_t.ndim)
        else:
            v = model.reverse_log_variance(pred, x_t, t_batch, s_batch).exp()
        sigma2 = (self.params.eta**2 * v).clamp(max=1 - abar_prev)
        # eq. 12: "predicted x0" + "direction pointing to x_t" + random noise
        direction = (1 - abar_prev - sigma2).sqrt() * pred.eps
        x_prev = abar_prev.sqrt() * pred.x0 + direction
        if self.params.eta > 0 and t_prev >= 0:
            x_prev = x_prev + sigma2.sqrt() * randn_like(x_t, generator)
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
        abar = model.alphas_cumprod
        with torch.no_grad():
            x = x0.to(device)
            for i, t in enumerate(ts):
                t_prev = ts[i - 1] if i > 0 else -1
                t_batch = torch.full((x.shape[0],), t, device=device, dtype=torch.long)
                # eps at the current point x_{t_prev}, asking the network at index t
                pred = model.predict(x, t_batch, cond)
                # x0_hat at the current level abar_prev (thresholding would break the round trip)
                abar_prev = abar[t_prev] if t_prev >= 0 else abar.new_ones(())
                x0_hat = x0_from_eps(x, pred.eps, abar_prev.sqrt(), (1 - abar_prev).sqrt())
                # eq. 12 with sigma = 0, upwards: x_t = sqrt(abar_t) x0_hat + sqrt(1 - abar_t) eps
                x = abar[t].sqrt() * x0_hat + (1 - abar[t]).sqrt() * pred.eps
                if callback is not None:
                    callback(SamplerStep(index=i, total=len(ts), t=t, x=x, x0=x0_hat))
        return x
