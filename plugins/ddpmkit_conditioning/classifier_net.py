"""The noise-aware classifier p_phi(y | x_t, t) of classifier guidance: the U-Net's
downsampling half, pooled, then a linear head (Dhariwal & Nichol 2021, section 4.1)."""

from __future__ import annotations

from typing import Annotated, Literal

import pydantic
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from pydantic import Field, model_validator
from torch import nn

from ddpmkit import Params
from ddpmkit_unet import AttentionBlock, Downsample, ResBlock, TimeEmbedding, UNetParams

Level = Annotated[int, Field(ge=1, le=64)]


class ClassifierShape(Params):
    """The classifier's architecture: the U-Net's encoder keys, with the same meaning."""

    base_channels: int = Field(32, ge=1, le=4096, description="Channels of the first level.")
    channel_mults: tuple[Level, ...] = Field(
        (1, 2, 2),
        min_length=1,
        max_length=8,
        description="Channel multiplier of each level; the resolution halves between levels.",
    )
    num_res_blocks: int = Field(1, ge=1, le=32, description="Residual blocks per level.")
    attention_levels: tuple[Annotated[int, Field(ge=0, le=7)], ...] = Field(
        (),
        description="Levels (0 = full resolution) whose blocks use self-attention; the "
        "middle block always does.",
    )
    num_heads: int = Field(4, ge=1, le=1024, description="Attention heads.")
    groups: int = Field(8, ge=1, le=1024, description="GroupNorm groups.")
    time_embedding: Literal["sinusoidal", "fourier"] = Field(
        "sinusoidal", description="Timestep features, as the U-Net's."
    )

    @model_validator(mode="after")
    def _check_like_the_unet(self) -> ClassifierShape:
        # the same widths, groups and heads as a U-Net's encoder: its checks apply as they are
        try:
            UNetParams(**self.model_dump(include=set(ClassifierShape.model_fields)))
        except pydantic.ValidationError as exc:
            raise ValueError("; ".join(error["msg"] for error in exc.errors())) from None
        return self


class ClassifierNetParams(ClassifierShape):
    """A classifier network: its architecture, input channels and number of classes."""

    in_channels: int = Field(3, ge=1, le=1024, description="Channels of x_t.")
    num_classes: int = Field(2, ge=2, le=100_000, description="Number of classes K.")


class ClassifierNet(nn.Module):
    """p_phi(y | x_t, t) as logits ``(B, K)`` for ``x_t`` ``(B, C, H, W)`` at training index
    ``t`` ``(B,)`` (Dhariwal & Nichol 2021, section 4.1).

    ``conv_in`` -> the U-Net's down path (residual blocks with the time embedding, attention
    at ``attention_levels``, strided downsampling) -> its middle block (residual, attention,
    residual) -> GroupNorm, SiLU, global average pooling -> a linear head. Dhariwal & Nichol
    pool with attention at 8x8; at the kit's small sizes average pooling does as well.
    """

    def __init__(self, params: ClassifierNetParams) -> None:
        super().__init__()
        self.params = p = params
        emb_dim = 4 * p.base_channels
        self.time_embed = TimeEmbedding(p.time_embedding, p.base_channels, emb_dim)
        self.conv_in = nn.Conv2d(p.in_channels, p.base_channels, 3, padding=1)
        blocks: list[nn.Module] = []
        ch = p.base_channels
        for level, mult in enumerate(p.channel_mults):
            for _ in range(p.num_res_blocks):
                blocks.append(ResBlock(ch, p.base_channels * mult, emb_dim, p.groups))
                ch = p.base_channels * mult
                if level in p.attention_levels:
                    blocks.append(AttentionBlock(ch, p.num_heads, p.groups))
            if level < len(p.channel_mults) - 1:
                blocks.append(Downsample(ch))
        self.down = nn.ModuleList(blocks)
        self.mid = nn.ModuleList(
            [
                ResBlock(ch, ch, emb_dim, p.groups),
                AttentionBlock(ch, p.num_heads, p.groups),
                ResBlock(ch, ch, emb_dim, p.groups),
            ]
        )
        self.norm_out = nn.GroupNorm(p.groups, ch)
        self.head = nn.Linear(ch, p.num_classes)

    @property
    def downsample_factor(self) -> int:
        """H and W must be multiples of this: 2 ** (levels - 1)."""
        return 2 ** (len(self.params.channel_mults) - 1)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Logits of p_phi(y | x_t, t), ``(B, K)``."""
        if x_t.ndim != 4 or x_t.shape[1] != self.params.in_channels:
            raise ValueError(
                f"classifier: x_t must be (B, {self.params.in_channels}, H, W), "
                f"got {tuple(x_t.shape)}"
            )
        f = self.downsample_factor
        if x_t.shape[2] % f or x_t.shape[3] % f:
            raise ValueError(
                f"classifier: image size {tuple(x_t.shape[2:])} is not divisible by its "
                f"downsample factor {f} (2 ** (len(channel_mults) - 1))"
            )
        emb = self.time_embed(t, x_t.dtype)
        h = self.conv_in(x_t)
        for block in [*self.down, *self.mid]:
            h = block(h, emb) if isinstance(block, ResBlock) else block(h)
        # global average pooling of the last feature map, then the linear head
        return self.head(F.silu(self.norm_out(h)).mean(dim=(2, 3)))
