"""Timestep features shared by networks: the Transformer's sin/cos of the index t."""

from __future__ import annotations

import math

import torch
from torch import nn


def timestep_features(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer sin/cos features of the index ``t`` ``(B,)`` (Vaswani et al. 2017, sec. 3.5),
    ``(B, dim)`` float32, as Ho et al. (2020) embed timesteps; odd ``dim`` gets a zero column."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / max(half, 1))
    args = t.to(torch.float32)[:, None] * freqs[None, :]
    features = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    return nn.functional.pad(features, (0, dim - 2 * half))
