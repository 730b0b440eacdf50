"""Min-SNR-gamma weighting of Hang et al. (2023)."""

from __future__ import annotations

import torch
from pydantic import Field

from ddpmkit import DiffusionModel, LossWeighting, Params
from ddpmkit_weightings.snr import snr_at


class MinSNRWeightingParams(Params):
    """Parameters of the ``min-snr`` weighting."""

    gamma: float = Field(
        5.0, gt=0, description="Clamp gamma on the x_0-space weight min(SNR(t), gamma)."
    )


class MinSNRWeighting(LossWeighting):
    """w_t = min(SNR(t), gamma) / SNR(t) = min(1, gamma / SNR(t)) on ||eps - eps_hat||^2.

    Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy": the loss
    on x_0 is weighted by min(SNR(t), gamma), and ||eps - eps_hat||^2 = SNR(t) ||x_0 -
    x0_hat||^2, hence the division. Through the parameterization's ``eps_error_factor`` this
    gives the paper's weights on each network's own error: min(SNR, gamma) / SNR for eps,
    min(SNR, gamma) for x_0 and min(SNR, gamma) / (SNR + 1) for v. t is drawn uniformly.
    """

    Params = MinSNRWeightingParams
    params: MinSNRWeightingParams

    def weights(self, t: torch.Tensor, model: DiffusionModel) -> torch.Tensor:
        """min(1, gamma / SNR(t)), in the model's dtype."""
        w = (self.params.gamma / snr_at(model, t)).clamp(max=1.0)
        return w.to(model.alphas_cumprod.dtype)
