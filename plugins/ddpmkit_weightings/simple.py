"""L_simple: every timestep counts the same (Ho et al. 2020, eq. 14)."""

from __future__ import annotations

import torch

from ddpmkit import DiffusionModel, LossWeighting


class SimpleWeighting(LossWeighting):
    """w_t = 1: L_simple = E_{t, x_0, eps} ||eps - eps_theta(x_t, t)||^2 (Ho et al. eq. 14).

    t is drawn uniformly with correction 1 (Algorithm 1, line 3), as when no weighting is set.
    """

    def weights(self, t: torch.Tensor, model: DiffusionModel) -> torch.Tensor:
        """Ones, in the model's dtype, on the device of ``t``."""
        return torch.ones(t.shape, dtype=model.alphas_cumprod.dtype, device=t.device)
