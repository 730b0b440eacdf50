"""U-Net blocks: residual and resampling (Ho et al. 2020; Dhariwal & Nichol 2021).

Every block keeps the dtype rules of the denoiser contract: it computes in the dtype of its
inputs, or in whatever dtype ``torch.autocast`` chooses for each operation.
"""

from __future__ import annotations

from typing import TypeVar

import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from torch import nn

M = TypeVar("M", bound=nn.Module)


def zero_init(module: M) -> M:
    """Zero every parameter of ``module`` so a residual branch starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """Residual block with timestep conditioning (Ho et al. 2020; Dhariwal & Nichol 2021).

    ``GroupNorm, SiLU, conv``; then the time embedding is injected, either added
    (``scale_shift=False``, Ho et al.) or as adaptive group norm ``norm(h) * (1 + s) + b``
    (Dhariwal & Nichol); then ``GroupNorm, SiLU, dropout, conv``; a 1x1 conv on the skip path
    when the channel count changes.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_dim: int,
        groups: int,
        dropout: float = 0.0,
        scale_shift: bool = True,
    ) -> None:
        super().__init__()
        self.scale_shift = scale_shift
        self.norm1 = nn.GroupNorm(groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        emb_out = 2 * out_channels if scale_shift else out_channels
        self.emb_proj = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, emb_out))
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip: nn.Module = nn.Identity()
        if in_channels != out_channels:
            self.skip = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, C_in, H, W)``, ``emb`` ``(B, D)`` -> ``(B, C_out, H, W)``."""
        h = self.conv1(F.silu(self.norm1(x)))
        e = self.emb_proj(emb)[:, :, None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + e)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Downsample(nn.Module):
    """Halve the resolution with a strided 3x3 convolution (Ho et al. 2020)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, C, H / 2, W / 2)``."""
        return self.conv(x)


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour upsampling then a 3x3 conv (Ho et al. 2020)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, C, 2H, 2W)``."""
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
