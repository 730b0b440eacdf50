"""L_simple: every timestep counts the same (Ho et al. 2020, eq. 14)."""

from __future__ import annotations

import torch

from ddpmkit import DiffusionModel, LossWeighting


class SimpleWeighting(LossWeighting):
    """w_t = 1: L_simple = E_{t, x_0, eps} ||eps - eps_theta(x_t, t)||^2 (Ho et al. eq. 14).

    t is drawn uniformly with correction 1 (Algorithm 1, line 3). Like every weighting it
    is an eps-space weight: for the eps parameterization it equals having no weighting; for x0
    or v it weights their target error by the eps factor (SNR, alpha^2), which makes the loss
    exactly Ho et al.'s eps error, whereas no weighting regresses the target itself.
    """

    def weights(self, t: torch.Tensor, model: DiffusionModel) -> torch.Tensor:
        """Ones, in the model's dtype, on the device of ``t``."""
        return torch.ones(t.shape, dtype=model.alphas_cumprod.dtype, device=t.device)
