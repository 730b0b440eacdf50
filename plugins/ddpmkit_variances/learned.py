"""The learned interpolated variance of Nichol & Dhariwal (2021), eq. 15."""

from __future__ import annotations

from typing import ClassVar

import torch

from ddpmkit import DiffusionModel, ReverseVariance, column


class LearnedRangeVariance(ReverseVariance):
    """Sigma_theta = exp(v log beta_t + (1 - v) log beta~_t) (Nichol & Dhariwal 2021, eq. 15).

    The network emits 2C channels; the second C give v per dimension, read from [-1, 1] as in
    the authors' code. Train it with the hybrid loss (``train.vlb_weight = 0.001``).
    """

    output_multiplier: ClassVar[int] = 2

    def log_variance(
        self,
        model: DiffusionModel,
        t: torch.Tensor,
        s: torch.Tensor,
        extra: torch.Tensor | None,
        x_t: torch.Tensor,
    ) -> torch.Tensor:
        """v log beta + (1 - v) log beta~ per dimension."""
        if extra is None or extra.shape != x_t.shape:
            got = None if extra is None else tuple(extra.shape)
            raise ValueError(
                f"learned-range variance needs {x_t.shape[1]} extra output channels "
                f"(a denoiser with twice the data's channels); got {got}"
            )
        log_beta, log_beta_tilde = model.step_log_variances(t, s)
        # eq. 15, with v mapped from the network's [-1, 1] to [0, 1]
        v = (extra + 1.0) / 2.0
        return v * column(log_beta, x_t.ndim) + (1.0 - v) * column(log_beta_tilde, x_t.ndim)
