"""The shifted cosine schedule of Hoogeboom et al. (2023), *simple diffusion*, section 3.1."""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field, model_validator

import ddpmkit


class ShiftedCosineScheduleParams(ddpmkit.Params):
    """Parameters of the ``shifted-cosine`` schedule."""

    timesteps: int = Field(1000, ge=1, description="Number of training steps T.")
    image_size: int = Field(
        64, ge=1, description="Resolution d of the images trained on (the shift's numerator)."
    )
    base_size: int = Field(
        64, ge=1, description="Resolution the unshifted cosine schedule is meant for (64)."
    )
    logsnr_min: float = Field(-15.0, description="log-SNR of the cosine schedule at t = 1.")
    logsnr_max: float = Field(15.0, description="log-SNR of the cosine schedule at t = 0.")

    @model_validator(mode="after")
    def _check_range(self) -> ShiftedCosineScheduleParams:
        if self.logsnr_min >= self.logsnr_max:
            raise ValueError("logsnr_min must be smaller than logsnr_max")
        return self


def cosine_logsnr(t: torch.Tensor, logsnr_min: float, logsnr_max: float) -> torch.Tensor:
    """log SNR(t) = -2 log tan(t_min + t (t_max - t_min)) (Hoogeboom et al. 2023, sec. 3.1),
    the cosine schedule's log-SNR with its ends clipped to [logsnr_min, logsnr_max]."""
    t_min = math.atan(math.exp(-0.5 * logsnr_max))
    t_max = math.atan(math.exp(-0.5 * logsnr_min))
    return -2.0 * torch.log(torch.tan(t_min + t * (t_max - t_min)))


class ShiftedCosineSchedule(ddpmkit.NoiseSchedule):
    """log SNR_shifted(t) = log SNR_cosine(t) + 2 log(base_size / image_size) (Hoogeboom et
    al. 2023, sec. 3.1); abar_t = sigmoid(log SNR) at t = (i + 1) / T for index i.

    Larger images keep more signal at a given noise level, so the schedule is shifted towards
    more noise by the ratio of resolutions; at ``image_size == base_size`` it is the cosine
    schedule, abar = cos^2(t_min + t (t_max - t_min)).
    """

    Params = ShiftedCosineScheduleParams
    params: ShiftedCosineScheduleParams

    @classmethod
    def wire(cls, context: ddpmkit.BuildContext) -> dict[str, Any]:
        """In a pipeline of images: ``image_size`` is the data's (unless the file sets it)."""
        return {"image_size": context.image_size} if context.image_size else {}

    def make_alphas_cumprod(self) -> torch.Tensor:
        """abar_t for the training indices 0 .. T-1 (continuous times 1/T .. 1)."""
        p = self.params
        t = torch.arange(1, p.timesteps + 1, dtype=torch.float64) / p.timesteps
        logsnr = cosine_logsnr(t, p.logsnr_min, p.logsnr_max)
        logsnr = logsnr + 2.0 * math.log(p.base_size / p.image_size)
        # abar = SNR / (1 + SNR) = sigmoid(log SNR)
        return torch.sigmoid(logsnr)
