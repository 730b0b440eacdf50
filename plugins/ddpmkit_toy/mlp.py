"""``mlp``: a small time-conditioned multilayer perceptron for vector data ``(B, D)``."""

from __future__ import annotations

import itertools
import math

import torch
from pydantic import Field
from torch import nn

from ddpmkit import Conditioning, Denoiser, Params
from ddpmkit_toy._cond import check_unconditional


class MLPParams(Params):
    """Parameters of the ``mlp`` denoiser."""

    in_channels: int = Field(2, ge=1, description="Dimension D of the data x_t.")
    out_channels: int | None = Field(
        None, ge=1, description="Output dimension; None means in_channels."
    )
    hidden: int = Field(128, ge=1, description="Width of every hidden layer.")
    layers: int = Field(3, ge=1, description="Number of hidden layers.")
    time_dim: int = Field(64, ge=2, description="Number of sinusoidal features of t.")


def sinusoidal(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer sin/cos features of the index ``t`` ``(B,)`` (Vaswani et al. 2017, sec. 3.5),
    ``(B, dim)`` float32, as used for timesteps by Ho et al. 2020."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = t.to(torch.float32)[:, None] * freqs[None, :]
    features = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    return nn.functional.pad(features, (0, dim - 2 * half))


class MLPDenoiser(Denoiser):
    """[x_t, sinusoidal(t)] -> (Linear, SiLU) x layers -> Linear: the usual toy-data network."""

    Params = MLPParams
    params: MLPParams

    def __init__(self, params: MLPParams | None = None) -> None:
        super().__init__(params)
        p = self.params
        widths = [p.in_channels + p.time_dim] + [p.hidden] * p.layers
        blocks: list[nn.Module] = []
        for n_in, n_out in itertools.pairwise(widths):
            blocks += [nn.Linear(n_in, n_out), nn.SiLU()]
        self.net = nn.Sequential(*blocks, nn.Linear(p.hidden, self.out_channels))

    @property
    def in_channels(self) -> int:
        """D."""
        return self.params.in_channels

    @property
    def out_channels(self) -> int:
        """``out_channels``, or D when unset."""
        p = self.params
        return p.out_channels if p.out_channels is not None else p.in_channels

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None
    ) -> torch.Tensor:
        """The network output ``(B, out_channels)``."""
        check_unconditional(cond, "mlp")
        if x_t.ndim != 2 or x_t.shape[1] != self.in_channels:
            raise ValueError(f"mlp expects x_t of shape (B, {self.in_channels}), got {x_t.shape}")
        features = sinusoidal(t, self.params.time_dim).to(x_t.dtype)
        return self.net(torch.cat([x_t, features], dim=1))
