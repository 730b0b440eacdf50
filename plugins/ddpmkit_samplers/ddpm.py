"""Ancestral sampling of Ho et al. (2020), Algorithm 2."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from ddpmkit import DiffusionModel, Prediction, randn_like
from ddpmkit_samplers.chain import ChainSampler, ChainSamplerParams


class DDPMSamplerParams(ChainSamplerParams):
    """Parameters of the ``ddpm`` sampler."""

    variance: Literal["beta", "beta_tilde"] = Field(
        "beta",
        description=(
            "Reverse variance sigma_t^2: beta_t (the upper bound) or the posterior variance "
            "beta~_t (the lower bound); Ho et al. section 3.2 found both work similarly."
        ),
    )


class DDPMSampler(ChainSampler):
    """x_{t-1} = mu_theta(x_t, t) + sigma_t z over all T steps (Ho et al. 2020, Algorithm 2)."""

    Params = DDPMSamplerParams
    params: DDPMSamplerParams

    def timesteps(self, model: DiffusionModel) -> list[int]:
        """Every training step, T-1 down to 0."""
        return list(range(model.T - 1, -1, -1))

    def step(
        self,
        model: DiffusionModel,
        pred: Prediction,
        x_t: torch.Tensor,
        t: int,
        t_prev: int,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """Algorithm 2, lines 3-4."""
        t_batch = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
        # mu_theta(x_t, t) = mu~_t(x_t, x0_hat): Ho et al. eq. 11 written through eq. 7
        mean, _, _ = model.q_posterior(pred.x0, x_t, t_batch)
        # line 3: z ~ N(0, I) if t > 1, else z = 0  (index 0 is the paper's t = 1)
        if t == 0:
            return mean
        variances = model.betas if self.params.variance == "beta" else model.posterior_variance
        sigma = variances[t].sqrt()
        # line 4: x_{t-1} = mu_theta + sigma_t z
        return mean + sigma * randn_like(x_t, generator)
