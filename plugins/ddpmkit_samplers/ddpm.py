"""Ancestral sampling of Ho et al. (2020), Algorithm 2."""

from __future__ import annotations

import torch

from ddpmkit import DiffusionModel, Prediction, randn_like
from ddpmkit_samplers.chain import ChainSampler


class DDPMSampler(ChainSampler):
    """x_{t-1} = mu_theta(x_t, t) + sigma_t z over all T steps (Ho et al. 2020, Algorithm 2).

    sigma_t^2 is the model's reverse variance: beta_t, beta~_t, learned or analytic, whichever
    the model was built with.
    """

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
        mean, log_variance = model.p_mean_variance(pred, x_t, t_batch, t_batch - 1)
        # line 3: z ~ N(0, I) if t > 1, else z = 0  (index 0 is the paper's t = 1)
        if t == 0:
            return mean
        # line 4: x_{t-1} = mu_theta + sigma_t z
        return mean + (0.5 * log_variance).exp() * randn_like(x_t, generator)
