"""Ancestral sampling of Ho et al. (2020), Algorithm 2, on all T or respaced timesteps."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field

from ddpmkit import DiffusionModel, Prediction, randn_like
from ddpmkit_samplers.chain import ChainSampler, ChainSamplerParams
from ddpmkit_samplers.spacing import SPACING_HELP, IndexSpacing, ddim_timesteps


class DDPMSamplerParams(ChainSamplerParams):
    """Parameters of the ``ddpm`` sampler."""

    steps: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description=(
            "Number of sampling steps S (at most T); None visits all T training steps. With "
            "S < T the chain is respaced (Nichol & Dhariwal 2021, section 4)."
        ),
    )
    spacing: IndexSpacing = Field(
        "linspace", description=f"{SPACING_HELP} Only used when steps is set."
    )


class DDPMSampler(ChainSampler):
    """x_s = mu_theta(x_t, t) + sigma z over the visited steps t -> s (Ho et al. 2020,
    Algorithm 2; respaced as in Nichol & Dhariwal 2021, section 4).

    On all T steps s = t - 1. On S < T steps (``steps``, ``spacing``) the visited indices
    t_1 > ... > t_S define a shorter Markov chain whose step t -> s has forward variance
    beta_{t|s} = 1 - abar_t / abar_s; mu_theta is the posterior mean of that step and sigma^2
    the model's reverse variance for it: beta_{t|s}, beta~_{t|s}, learned or analytic, whichever
    the model was built with. The last step lands on x_0 (s = -1, abar_{-1} = 1) without noise.
    """

    Params = DDPMSamplerParams
    params: DDPMSamplerParams

    def timesteps(self, model: DiffusionModel) -> list[int]:
        """Every training step, T-1 down to 0, or S of them chosen by ``spacing``."""
        if self.params.steps is None:
            return list(range(model.T - 1, -1, -1))
        return ddim_timesteps(model.T, self.params.steps, self.params.spacing, name="ddpm")

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
        """Ho et al. (2020) Algorithm 2, lines 3-4, for the step t -> t_prev of the chain."""
        batch = (x_t.shape[0],)
        t_batch = torch.full(batch, t, device=x_t.device, dtype=torch.long)
        s_batch = torch.full(batch, t_prev, device=x_t.device, dtype=torch.long)
        # mu_theta = mu~(x_t, x0_hat) (eq. 7, 11) and sigma_t^2, the model's reverse variance
        mean, log_variance = model.p_mean_variance(pred, x_t, t_batch, s_batch)
        # line 3: z ~ N(0, I) if t > 1, else z = 0  (the step onto x_0, index -1, has no noise)
        if t_prev < 0:
            return mean
        # line 4: x_{t-1} = mu_theta + sigma_t z
        return mean + (0.5 * log_variance).exp() * randn_like(x_t, generator)
