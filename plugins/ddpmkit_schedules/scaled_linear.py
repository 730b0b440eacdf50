"""The scaled-linear schedule of latent diffusion (Rombach et al. 2022; Stable Diffusion)."""

from __future__ import annotations

import torch
from pydantic import Field, model_validator

from ddpmkit_schedules.base import RescalableParams, RescalableSchedule


class ScaledLinearScheduleParams(RescalableParams):
    """Parameters of the ``scaled-linear`` schedule."""

    timesteps: int = Field(1000, ge=1, le=100_000, description="Number of training steps T.")
    beta_start: float = Field(0.00085, gt=0, lt=1, description="beta_1.")
    beta_end: float = Field(0.012, gt=0, lt=1, description="beta_T.")

    @model_validator(mode="after")
    def _check_ends(self) -> ScaledLinearScheduleParams:
        if self.beta_start > self.beta_end:
            raise ValueError("beta_start must not exceed beta_end")
        return self


class ScaledLinearSchedule(RescalableSchedule):
    """sqrt(beta_t) linear from sqrt(0.00085) to sqrt(0.012) (Rombach et al. 2022, the
    ``scaled_linear`` schedule of the latent diffusion / Stable Diffusion code).

    The ends are used as given for any T (unlike ``linear``, nothing is scaled by 1000 / T).
    """

    Params = ScaledLinearScheduleParams
    params: ScaledLinearScheduleParams

    def base_alphas_cumprod(self) -> torch.Tensor:
        """abar_t = prod_{s <= t} (1 - beta_s), beta = linspace(sqrt(b_1), sqrt(b_T), T)^2."""
        p = self.params
        sqrt_betas = torch.linspace(
            p.beta_start**0.5, p.beta_end**0.5, p.timesteps, dtype=torch.float64
        )
        return torch.cumprod(1.0 - sqrt_betas**2, dim=0)
