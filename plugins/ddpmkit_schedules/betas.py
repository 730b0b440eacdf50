"""A schedule given as an explicit list of betas (Ho et al. 2020, eq. 4: abar_t = prod alpha_s)."""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field

from ddpmkit_schedules.base import RescalableParams, RescalableSchedule


class BetasScheduleParams(RescalableParams):
    """Parameters of the ``betas`` schedule."""

    betas: list[Annotated[float, Field(gt=0, lt=1)]] = Field(
        min_length=1,
        max_length=100_000,
        description="beta_1 .. beta_T, each in (0, 1); T is the length of the list.",
    )


class BetasSchedule(RescalableSchedule):
    """abar_t = prod_{s <= t} (1 - beta_s) for the given betas (Ho et al. 2020, eq. 4)."""

    Params = BetasScheduleParams
    params: BetasScheduleParams

    def base_alphas_cumprod(self) -> torch.Tensor:
        """The running product of 1 - beta_t."""
        betas = torch.tensor(self.params.betas, dtype=torch.float64)
        return torch.cumprod(1.0 - betas, dim=0)
