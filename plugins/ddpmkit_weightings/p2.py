"""Perception Prioritized (P2) weighting of Choi et al. (2022)."""

from __future__ import annotations

import torch
from pydantic import Field

from ddpmkit import DiffusionModel, LossWeighting, Params
from ddpmkit_weightings.snr import snr_at


class P2WeightingParams(Params):
    """Parameters of the ``p2`` weighting."""

    k: float = Field(
        1.0, gt=0, description="Offset k of 1 / (k + SNR)^gamma: bounds the weight by k^-gamma."
    )
    gamma: float = Field(
        1.0,
        ge=0,
        description="Exponent gamma: how strongly high-SNR (low-noise) steps are down-weighted "
        "(0: L_simple; the paper uses 0.5 or 1).",
    )


class P2Weighting(LossWeighting):
    """w_t = 1 / (k + SNR(t))^gamma on ||eps - eps_hat||^2 (Choi et al. 2022, "Perception
    Prioritized Training of Diffusion Models", section 3: lambda'_t = lambda_t / (k +
    SNR(t))^gamma with lambda_t the weighting of L_simple).

    gamma = 0 is L_simple; k = gamma = 1 gives w_t = 1 - abar_t. t is drawn uniformly.
    """

    Params = P2WeightingParams
    params: P2WeightingParams

    def weights(self, t: torch.Tensor, model: DiffusionModel) -> torch.Tensor:
        """(k + SNR(t))^-gamma, in the model's dtype."""
        w = (self.params.k + snr_at(model, t)).pow(-self.params.gamma)
        return w.to(model.alphas_cumprod.dtype)
