"""Timestep embeddings of the U-Net (Ho et al. 2020; Song et al. 2021; Tancik et al. 2020)."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from torch import nn

TimeEmbeddingKind = Literal["sinusoidal", "fourier"]


def _pad_odd(features: torch.Tensor, dim: int) -> torch.Tensor:
    """Append one zero column when ``dim`` is odd, so the features are exactly ``dim`` wide."""
    return F.pad(features, (0, dim - features.shape[-1])) if features.shape[-1] < dim else features


class SinusoidalEmbedding(nn.Module):
    """Fixed sin/cos timestep features of the Transformer, as used by Ho et al. 2020."""

    def __init__(self, dim: int, max_period: float = 10000.0) -> None:
        super().__init__()
        self.dim = dim
        self.max_period = max_period

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Map ``t`` ``(B,)`` to float32 features ``(B, dim)``: half sin, half cos."""
        half = self.dim // 2
        # Computed in float32 on every call (cheap) so that neither a module-wide ``.to(bf16)``
        # nor autocast ever rounds the frequencies or the phases.
        steps = torch.arange(half, device=t.device, dtype=torch.float32)
        freqs = torch.exp(-math.log(self.max_period) * steps / max(half, 1))
        args = t.to(torch.float32)[:, None] * freqs[None, :]
        return _pad_odd(torch.cat([torch.sin(args), torch.cos(args)], dim=-1), self.dim)


class FourierEmbedding(nn.Module):
    """Random Fourier features with fixed Gaussian frequencies (Tancik et al.; Song et al. 2021)."""

    freqs: torch.Tensor

    def __init__(self, dim: int, scale: float = 16.0) -> None:
        super().__init__()
        self.dim = dim
        # Persistent buffer: the frequencies are random, so a checkpoint must carry them.
        self.register_buffer("freqs", torch.randn(dim // 2) * scale)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Map ``t`` ``(B,)`` to float32 features ``(B, dim)``: sin and cos of 2 pi (t/1000) w.

        The step index is divided by a fixed 1000 so the frequencies count cycles over a
        reference chain of 1000 steps: neighbouring steps get neighbouring features.
        """
        time = t.to(torch.float32)[:, None] / 1000.0
        args = 2.0 * math.pi * time * self.freqs.float()[None, :]
        return _pad_odd(torch.cat([torch.sin(args), torch.cos(args)], dim=-1), self.dim)


class TimeEmbedding(nn.Module):
    """Timestep features followed by the Linear-SiLU-Linear MLP of Ho et al. 2020."""

    def __init__(
        self, kind: TimeEmbeddingKind, dim: int, out_dim: int, fourier_scale: float = 16.0
    ) -> None:
        super().__init__()
        self.features: nn.Module
        if kind == "sinusoidal":
            self.features = SinusoidalEmbedding(dim)
        elif kind == "fourier":
            self.features = FourierEmbedding(dim, fourier_scale)
        else:
            raise ValueError(f"unknown time embedding {kind!r}; use 'sinusoidal' or 'fourier'")
        self.mlp = nn.Sequential(nn.Linear(dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Embed ``t`` ``(B,)`` as ``(B, out_dim)``; the features are cast to ``dtype`` first."""
        return self.mlp(self.features(t).to(dtype))
