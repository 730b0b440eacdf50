"""SNR(t) at training indices, shared by the SNR-based weightings."""

from __future__ import annotations

import torch

from ddpmkit import DiffusionModel


def snr_at(model: DiffusionModel, t: torch.Tensor) -> torch.Tensor:
    """SNR(t) = abar_t / (1 - abar_t) (Kingma et al. 2021) in float64, shape ``(B,)``.

    Read from the model's float64 abar buffer, so it is on the model's device and agrees with
    ``model.schedule.snr[t]``.
    """
    abar = model.abar_at(t)
    return abar / (1.0 - abar)
