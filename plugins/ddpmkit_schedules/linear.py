"""The linear beta schedule of Ho et al. (2020), section 4."""

from __future__ import annotations

import torch
from pydantic import Field, model_validator

from ddpmkit_schedules.base import RescalableParams, RescalableSchedule


class LinearScheduleParams(RescalableParams):
    """Parameters of the ``linear`` schedule."""

    timesteps: int = Field(1000, ge=1, le=100_000, description="Number of training steps T.")
    beta_start: float = Field(1e-4, gt=0, lt=1, description="beta_1 at T = 1000.")
    beta_end: float = Field(0.02, gt=0, lt=1, description="beta_T at T = 1000.")
    scale_with_timesteps: bool = Field(
        True,
        description=(
            "Multiply both ends by 1000 / T so that any T diffuses as far as Ho et al.'s "
            "T = 1000 (as in Nichol & Dhariwal's code); false uses the ends as given."
        ),
    )

    @model_validator(mode="after")
    def _check_ends(self) -> LinearScheduleParams:
        scale = self.scale if self.scale_with_timesteps else 1.0
        if self.beta_start > self.beta_end:
            raise ValueError("beta_start must not exceed beta_end")
        if self.beta_end * scale >= 1.0:
            raise ValueError(
                f"beta_end * 1000 / timesteps = {self.beta_end * scale:.3g} must be < 1; "
                "use more timesteps or scale_with_timesteps = false"
            )
        return self

    @property
    def scale(self) -> float:
        """The factor 1000 / T applied to both ends."""
        return 1000.0 / self.timesteps


class LinearSchedule(RescalableSchedule):
    """beta_t linear from beta_1 = 1e-4 to beta_T = 0.02 (Ho et al. 2020, section 4).

    For T other than 1000 both ends are scaled by 1000 / T (``scale_with_timesteps``), which
    keeps abar_T close to Ho et al.'s value (about 4e-5) for any T.
    """

    Params = LinearScheduleParams
    params: LinearScheduleParams

    def base_alphas_cumprod(self) -> torch.Tensor:
        """abar_t = prod_{s <= t} (1 - beta_s)."""
        p = self.params
        scale = p.scale if p.scale_with_timesteps else 1.0
        betas = torch.linspace(
            p.beta_start * scale, p.beta_end * scale, p.timesteps, dtype=torch.float64
        )
        return torch.cumprod(1.0 - betas, dim=0)
