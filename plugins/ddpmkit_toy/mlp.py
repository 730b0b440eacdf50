"""``mlp``: a small time-conditioned multilayer perceptron for vector data ``(B, D)``."""

from __future__ import annotations

import itertools
from typing import Any

import attrs
import torch
from pydantic import Field
from torch import nn

from ddpmkit import BuildContext, Conditioning, Denoiser, Params, timestep_features
from ddpmkit_toy._cond import check_unconditional


class MLPParams(Params):
    """Parameters of the ``mlp`` denoiser."""

    in_channels: int = Field(2, ge=1, le=65536, description="Dimension D of the data x_t.")
    out_channels: int | None = Field(
        None, ge=1, le=131072, description="Output dimension; None means in_channels."
    )
    hidden: int = Field(128, ge=1, le=65536, description="Width of every hidden layer.")
    layers: int = Field(3, ge=1, le=256, description="Number of hidden layers.")
    time_dim: int = Field(64, ge=2, le=65536, description="Number of sinusoidal features of t.")
    cond_embed_dim: int = Field(
        0,
        ge=0,
        le=65536,
        description="Width of cond.embedding, concatenated to the input (0: unconditional).",
    )


def sinusoidal(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer sin/cos features of ``t`` ``(B,)``: :func:`ddpmkit.timestep_features`."""
    return timestep_features(t, dim, max_period)


class MLPDenoiser(Denoiser):
    """[x_t, sinusoidal(t)] -> (Linear, SiLU) x layers -> Linear: the usual toy-data network.

    With ``cond_embed_dim`` > 0 it also takes ``cond.embedding`` ``(B, cond_embed_dim)``,
    concatenated to the input; an absent embedding counts as zeros (the null condition).
    """

    Params = MLPParams
    params: MLPParams

    @classmethod
    def wire(cls, context: BuildContext) -> dict[str, Any]:
        """In a pipeline: the data's D in, D times the variance's output multiplier out, and
        the width of the conditioner's embedding."""
        channels = context.denoiser_channels()
        return {**channels, "cond_embed_dim": context.embedding_dim} if channels else {}

    def __init__(self, params: MLPParams | None = None) -> None:
        super().__init__(params)
        p = self.params
        widths = [p.in_channels + p.time_dim + p.cond_embed_dim] + [p.hidden] * p.layers
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
        width = self.params.cond_embed_dim
        embedding = cond.embedding if cond is not None else None
        rest = cond if embedding is None else attrs.evolve(cond, embedding=None)  # type: ignore[misc]
        check_unconditional(rest, "mlp")
        if x_t.ndim != 2 or x_t.shape[1] != self.in_channels:
            raise ValueError(f"mlp expects x_t of shape (B, {self.in_channels}), got {x_t.shape}")
        inputs = [x_t, sinusoidal(t, self.params.time_dim).to(x_t.dtype)]
        if width > 0:
            if embedding is None:
                embedding = x_t.new_zeros(x_t.shape[0], width)
            if embedding.shape != (x_t.shape[0], width):
                raise ValueError(
                    f"mlp: cond.embedding must have shape {(x_t.shape[0], width)}, "
                    f"got {tuple(embedding.shape)}"
                )
            inputs.append(embedding.to(x_t.dtype))
        elif embedding is not None:
            raise ValueError("mlp was built with cond_embed_dim = 0 and accepts no cond.embedding")
        return self.net(torch.cat(inputs, dim=1))
