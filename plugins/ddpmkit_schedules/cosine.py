"""The cosine schedule of Nichol & Dhariwal (2021), eq. 17."""

from __future__ import annotations

import math

import torch
from pydantic import Field

from ddpmkit_schedules.base import RescalableParams, RescalableSchedule


class CosineScheduleParams(RescalableParams):
    """Parameters of the ``cosine`` schedule."""

    timesteps: int = Field(1000, ge=1, le=100_000, description="Number of training steps T.")
    s: float = Field(0.008, ge=0, description="Offset s that keeps beta_t from vanishing at t=0.")
    max_beta: float = Field(
        0.999, gt=0, lt=1, description="Clip on beta_t that avoids the singularity at t = T."
    )


class CosineSchedule(RescalableSchedule):
    """abar_t = f(t) / f(0), f(t) = cos((t/T + s) / (1 + s) * pi/2)^2 (Nichol & Dhariwal eq. 17).

    beta_t = 1 - abar_t / abar_{t-1} is clipped at ``max_beta`` (0.999) and abar is rebuilt
    from the clipped betas, as in the paper.
    """

    Params = CosineScheduleParams
    params: CosineScheduleParams

    def base_alphas_cumprod(self) -> torch.Tensor:
        """abar_t from the clipped cosine betas."""
        p = self.params
        steps = torch.arange(p.timesteps + 1, dtype=torch.float64) / p.timesteps
        f = torch.cos((steps + p.s) / (1.0 + p.s) * math.pi / 2.0) ** 2
        abar = f / f[0]
        betas = (1.0 - abar[1:] / abar[:-1]).clamp(max=p.max_beta)
        return torch.cumprod(1.0 - betas, dim=0)
