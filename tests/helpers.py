"""Test networks shared by several test files."""

from __future__ import annotations

from collections.abc import Sequence

import torch

import ddpmkit
from ddpmkit import Conditioning, Denoiser


class GaussianOracle(Denoiser):
    """The exact E[eps | x_t] for data x_0 ~ N(mu, s^2 I) in D dimensions.

    x_t = a x_0 + s_t eps is Gaussian with mean a mu and variance a^2 s^2 + s_t^2, so
    E[eps | x_t] = s_t (x_t - a mu) / (a^2 s^2 + s_t^2).
    """

    abar: torch.Tensor
    mu: torch.Tensor

    def __init__(self, mu: Sequence[float], s: float) -> None:
        super().__init__()
        self.register_buffer("mu", torch.tensor(mu, dtype=torch.float64))
        self.s = s

    def bind(
        self, schedule: ddpmkit.NoiseSchedule, parameterization: ddpmkit.Parameterization
    ) -> None:
        self.register_buffer("abar", schedule.alphas_cumprod.clone())

    @property
    def in_channels(self) -> int:
        return len(self.mu)

    @property
    def out_channels(self) -> int:
        return len(self.mu)

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None
    ) -> torch.Tensor:
        abar = self.abar[t][:, None].to(x_t.dtype)
        a, s_t = abar.sqrt(), (1 - abar).sqrt()
        return s_t * (x_t - a * self.mu.to(x_t.dtype)) / (abar * self.s**2 + s_t**2)
