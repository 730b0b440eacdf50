"""The two fixed reverse variances of Ho et al. (2020), section 3.2."""

from __future__ import annotations

import torch

from ddpmkit import DiffusionModel, ReverseVariance, column


class FixedLargeVariance(ReverseVariance):
    """sigma_t^2 = beta_t: optimal for x_0 ~ N(0, I) (Ho et al. 2020, section 3.2)."""

    fixed = "beta"

    def log_variance(
        self,
        model: DiffusionModel,
        t: torch.Tensor,
        s: torch.Tensor,
        extra: torch.Tensor | None,
        x_t: torch.Tensor,
    ) -> torch.Tensor:
        """log beta_{t|s}."""
        return column(model.step_log_variances(t, s)[0], x_t.ndim)


class FixedSmallVariance(ReverseVariance):
    """sigma_t^2 = beta~_t: optimal for a deterministic x_0 (Ho et al. 2020, section 3.2)."""

    fixed = "beta_tilde"

    def log_variance(
        self,
        model: DiffusionModel,
        t: torch.Tensor,
        s: torch.Tensor,
        extra: torch.Tensor | None,
        x_t: torch.Tensor,
    ) -> torch.Tensor:
        """log beta~_{t|s} (clipped on the last step)."""
        return column(model.step_log_variances(t, s)[1], x_t.ndim)
