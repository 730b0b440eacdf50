"""The sigmoid schedule of Jabri et al. (2022), Appendix (the ``sigmoid_schedule`` listing)."""

from __future__ import annotations

import torch
from pydantic import Field, model_validator

from ddpmkit import ConfigError
from ddpmkit_schedules.base import RescalableParams, RescalableSchedule


class SigmoidScheduleParams(RescalableParams):
    """Parameters of the ``sigmoid`` schedule."""

    timesteps: int = Field(1000, ge=1, le=100_000, description="Number of training steps T.")
    start: float = Field(-3.0, description="Sigmoid input at t = 0 (before dividing by tau).")
    end: float = Field(3.0, description="Sigmoid input at t = 1 (before dividing by tau).")
    tau: float = Field(
        1.0, gt=0, description="Temperature: a smaller tau makes abar fall more steeply mid-way."
    )
    clip_min: float = Field(
        1e-9,
        gt=0,
        lt=1,
        description="Lower clip on gamma (abar), which keeps the last step's abar above 0.",
    )

    @model_validator(mode="after")
    def _check_ends(self) -> SigmoidScheduleParams:
        if self.start >= self.end:
            raise ValueError("start must be less than end")
        return self


class SigmoidSchedule(RescalableSchedule):
    """abar_t = gamma((t+1)/T), gamma(u) = (v_end - sigmoid((u (end - start) + start) / tau)) /
    (v_end - v_start) (Jabri et al. 2022, Appendix; Chen 2023, Algorithm 1).

    v_start = sigmoid(start / tau) and v_end = sigmoid(end / tau), so gamma(0) = 1 and
    gamma(1) = 0; as in the papers' code gamma is clipped to ``[clip_min, 1]``, which lifts only
    the last step (gamma(1) = 0) to ``clip_min`` with the defaults.
    """

    Params = SigmoidScheduleParams
    params: SigmoidScheduleParams

    def base_alphas_cumprod(self) -> torch.Tensor:
        """abar_t = clip(gamma((t + 1) / T), clip_min, 1)."""
        p = self.params
        u = torch.arange(1, p.timesteps + 1, dtype=torch.float64) / p.timesteps
        v_start = torch.sigmoid(torch.tensor(p.start / p.tau, dtype=torch.float64))
        v_end = torch.sigmoid(torch.tensor(p.end / p.tau, dtype=torch.float64))
        output = torch.sigmoid((u * (p.end - p.start) + p.start) / p.tau)
        gamma = (v_end - output) / (v_end - v_start)
        if p.timesteps > 1 and gamma[-2] <= p.clip_min:
            raise ConfigError(
                f"schedule sigmoid: abar at step T-1 is {gamma[-2].item():.3g} <= clip_min; "
                "lower clip_min, raise tau, or use fewer timesteps"
            )
        return gamma.clamp(min=p.clip_min, max=1.0)
