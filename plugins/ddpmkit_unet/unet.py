"""The U-Net denoiser of Ho et al. 2020, with the refinements of Dhariwal & Nichol 2021."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from pydantic import Field, model_validator
from torch import nn
from torch.utils.checkpoint import checkpoint

from ddpmkit import BuildContext, Conditioning, Denoiser, Params
from ddpmkit_unet.attention import AttentionBlock
from ddpmkit_unet.blocks import Downsample, ResBlock, Upsample, zero_init
from ddpmkit_unet.embeddings import TimeEmbedding

PositiveInt = Annotated[int, Field(ge=1, le=64)]


class UNetParams(Params):
    """Parameters of the U-Net denoiser (Ho et al. 2020; Dhariwal & Nichol 2021)."""

    in_channels: int = Field(
        3, ge=1, le=1024, description="Channels of x_t (without conditioning)."
    )
    out_channels: int | None = Field(
        None, ge=1, le=2048, description="Output channels; None means in_channels."
    )
    base_channels: int = Field(64, ge=1, le=4096, description="Channels of the first level.")
    channel_mults: tuple[PositiveInt, ...] = Field(
        (1, 2, 2),
        min_length=1,
        max_length=8,
        description="Channel multiplier of each level; the resolution halves between levels.",
    )
    num_res_blocks: int = Field(
        2, ge=1, le=32, description="Residual blocks per level on the way down."
    )
    attention_levels: tuple[Annotated[int, Field(ge=0, le=7)], ...] = Field(
        (),
        description="Levels (0 = full resolution, 1 = halved, ...) whose blocks use "
        "self-attention; the middle block always does.",
    )
    num_heads: int = Field(
        4, ge=1, le=1024, description="Attention heads; must divide the channel count."
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout inside residual blocks.")
    time_embedding: Literal["sinusoidal", "fourier"] = Field(
        "sinusoidal",
        description="Timestep features: Transformer sinusoids or random Fourier features.",
    )
    fourier_scale: float = Field(
        16.0, gt=0.0, description="Std of the Gaussian frequencies of the Fourier features."
    )
    time_injection: Literal["add", "scale-shift"] = Field(
        "scale-shift",
        description="How residual blocks use the time embedding: added to the features "
        "(Ho et al.) or adaptive group norm scale and shift (Dhariwal & Nichol).",
    )
    groups: int = Field(
        8, ge=1, le=1024, description="GroupNorm groups; must divide every channel count."
    )
    cond_channels: int = Field(
        0,
        ge=0,
        le=1024,
        description="Channels of cond.channels, concatenated to x_t (0: not accepted).",
    )
    cond_embed_dim: int = Field(
        0,
        ge=0,
        le=65536,
        description="Width of cond.embedding, added to the time embedding (0: none).",
    )
    context_dim: int = Field(
        0, ge=0, le=65536, description="Width of cond.context tokens for cross-attention (0: none)."
    )

    @model_validator(mode="after")
    def _check_channels(self) -> UNetParams:
        widths = [self.base_channels] + [self.base_channels * m for m in self.channel_mults]
        bad = sorted({w for w in widths if w % self.groups})
        if bad:
            raise ValueError(
                f"groups={self.groups} must divide every level's channel count "
                f"(base_channels and base_channels * channel_mults: {widths}); "
                f"{bad} are not divisible"
            )
        too_deep = [lv for lv in self.attention_levels if lv >= len(self.channel_mults)]
        if too_deep:
            raise ValueError(
                f"attention_levels {too_deep} do not exist: there are "
                f"{len(self.channel_mults)} levels (0 .. {len(self.channel_mults) - 1})"
            )
        attn_widths = [widths[-1]] + [widths[1 + lv] for lv in self.attention_levels]
        bad = sorted({w for w in attn_widths if w % self.num_heads})
        if bad:
            raise ValueError(
                f"num_heads={self.num_heads} must divide the channel count of every level "
                f"with attention; {bad} are not divisible"
            )
        return self


class UNet(Denoiser):
    """Conditional U-Net denoiser of Ho et al. 2020 and Dhariwal & Nichol 2021.

    ``conv_in`` -> down path (``num_res_blocks`` residual blocks per level, attention where
    the level is in ``attention_levels``, strided-conv downsampling between
    levels) -> middle (residual, attention, residual) -> up path (``num_res_blocks + 1``
    blocks per level on the concatenated skips, nearest upsampling + conv) -> GroupNorm,
    SiLU, zero-initialised ``conv_out``. Self-attention follows every residual block of the
    levels in ``attention_levels``.
    """

    Params = UNetParams
    supports_gradient_checkpointing = True

    @classmethod
    def wire(cls, context: BuildContext) -> dict[str, Any]:
        """In a pipeline: the data's channels in, those times the variance's output multiplier
        out, and inputs for what the conditioner produces (channels, embedding, context)."""
        channels = context.denoiser_channels()
        if not channels:
            return {}
        return {
            **channels,
            "cond_channels": context.extra_channels,
            "cond_embed_dim": context.embedding_dim,
            "context_dim": context.context_dim,
        }

    def __init__(self, params: UNetParams | None = None) -> None:
        super().__init__(params)
        p: object = self.params
        if not isinstance(p, UNetParams):
            raise TypeError(f"UNet needs UNet.Params, got {type(p).__name__}")
        self._in_channels = p.in_channels
        self._out_channels = p.out_channels if p.out_channels is not None else p.in_channels
        self.cond_channels = p.cond_channels
        self.cond_embed_dim = p.cond_embed_dim
        self.context_dim = p.context_dim
        self.num_levels = len(p.channel_mults)

        emb_dim = 4 * p.base_channels
        self.time_embed = TimeEmbedding(p.time_embedding, p.base_channels, emb_dim, p.fourier_scale)
        self.cond_embed = nn.Linear(p.cond_embed_dim, emb_dim) if p.cond_embed_dim > 0 else None
        self.conv_in = nn.Conv2d(p.in_channels + p.cond_channels, p.base_channels, 3, padding=1)
        # Flat lists, ``num_res_blocks`` (down) or ``num_res_blocks + 1`` (up) blocks per level;
        # attention blocks are keyed by the index of the residual block they follow.
        self.num_res_blocks = p.num_res_blocks
        skips = self._build_down(p, emb_dim)
        ch = skips[-1]
        self.mid_res1 = _res_block(p, emb_dim, ch, ch)
        self.mid_attn = _attention_block(p, ch)
        self.mid_res2 = _res_block(p, emb_dim, ch, ch)
        ch = self._build_up(p, emb_dim, skips)
        self.norm_out = nn.GroupNorm(p.groups, ch)
        self.conv_out = zero_init(nn.Conv2d(ch, self._out_channels, 3, padding=1))

    def _build_down(self, p: UNetParams, emb_dim: int) -> list[int]:
        """The down path's blocks; returns the channel count of every skip connection."""
        ch = p.base_channels
        skips = [ch]
        self.down_res = nn.ModuleList()
        self.down_attn = nn.ModuleDict()
        self.downsample = nn.ModuleList()
        for level, mult in enumerate(p.channel_mults):
            for _ in range(p.num_res_blocks):
                self.down_res.append(_res_block(p, emb_dim, ch, p.base_channels * mult))
                ch = p.base_channels * mult
                if level in p.attention_levels:
                    self.down_attn[str(len(self.down_res) - 1)] = _attention_block(p, ch)
                skips.append(ch)
            if level < self.num_levels - 1:
                self.downsample.append(Downsample(ch))
                skips.append(ch)
        return skips

    def _build_up(self, p: UNetParams, emb_dim: int, skips: list[int]) -> int:
        """The up path's blocks, consuming ``skips``; returns its output channel count."""
        ch = skips[-1]
        self.up_res = nn.ModuleList()
        self.up_attn = nn.ModuleDict()
        self.upsample = nn.ModuleList()
        for level in reversed(range(self.num_levels)):
            out = p.base_channels * p.channel_mults[level]
            for _ in range(p.num_res_blocks + 1):
                self.up_res.append(_res_block(p, emb_dim, ch + skips.pop(), out))
                ch = out
                if level in p.attention_levels:
                    self.up_attn[str(len(self.up_res) - 1)] = _attention_block(p, ch)
            if level > 0:
                self.upsample.append(Upsample(ch))
        return ch

    @property
    def in_channels(self) -> int:
        """Channels of ``x_t`` (excluding conditioning channels)."""
        return self._in_channels

    @property
    def out_channels(self) -> int:
        """Channels of the output."""
        return self._out_channels

    @property
    def downsample_factor(self) -> int:
        """How much the lowest level is downsampled: H and W must be multiples of it."""
        return 2 ** (self.num_levels - 1)

    def _check_inputs(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning | None
    ) -> torch.Tensor:
        """Validate the call and return ``x_t`` with any conditioning channels appended."""
        if x_t.ndim != 4:
            raise ValueError(f"UNet expects x_t of shape (B, C, H, W), got {tuple(x_t.shape)}")
        b, c, h, w = x_t.shape
        if c != self.in_channels:
            raise ValueError(f"UNet was built for {self.in_channels} input channels, got {c}")
        f = self.downsample_factor
        if h % f or w % f:
            raise ValueError(
                f"UNet input size {h}x{w} is not divisible by its downsample factor {f} "
                f"(2 ** (len(channel_mults) - 1)); use H and W that are multiples of {f}"
            )
        if t.shape != (b,):
            raise ValueError(f"UNet expects t of shape ({b},), got {tuple(t.shape)}")
        cond = cond if cond is not None else Conditioning()
        if self.cond_channels == 0:
            if cond.channels is not None:
                raise ValueError(
                    "cond.channels was given but this UNet was built with cond_channels=0"
                )
            return x_t
        if cond.channels is None:
            raise ValueError(
                f"this UNet was built with cond_channels={self.cond_channels} "
                "and needs cond.channels"
            )
        if cond.channels.shape != (b, self.cond_channels, h, w):
            raise ValueError(
                f"cond.channels must have shape {(b, self.cond_channels, h, w)}, "
                f"got {tuple(cond.channels.shape)}"
            )
        return torch.cat([x_t, cond.channels.to(x_t.dtype)], dim=1)

    def _embedding(
        self, t: torch.Tensor, cond: Conditioning | None, x_t: torch.Tensor
    ) -> torch.Tensor:
        """Time embedding plus the projected ``cond.embedding``, if any."""
        emb = self.time_embed(t, x_t.dtype)
        e = cond.embedding if cond is not None else None
        if e is None:
            return emb
        if self.cond_embed is None:
            raise ValueError(
                "cond.embedding was given but this UNet was built with cond_embed_dim=0"
            )
        if e.shape != (x_t.shape[0], self.cond_embed_dim):
            raise ValueError(
                f"cond.embedding must have shape {(x_t.shape[0], self.cond_embed_dim)}, "
                f"got {tuple(e.shape)}"
            )
        return emb + self.cond_embed(e.to(x_t.dtype))

    def _context(
        self, cond: Conditioning | None, x_t: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Validated ``(context, context_mask)``; the mask comes back as a bool tensor."""
        if cond is None or (cond.context is None and cond.context_mask is None):
            return None, None
        context, mask = cond.context, cond.context_mask
        if context is None:
            raise ValueError("cond.context_mask was given without cond.context")
        if self.context_dim == 0:
            raise ValueError("cond.context was given but this UNet was built with context_dim=0")
        b = x_t.shape[0]
        if context.ndim != 3 or context.shape[0] != b or context.shape[2] != self.context_dim:
            raise ValueError(
                f"cond.context must have shape ({b}, L, {self.context_dim}), "
                f"got {tuple(context.shape)}"
            )
        if mask is not None and mask.shape != context.shape[:2]:
            raise ValueError(
                f"cond.context_mask must have shape {tuple(context.shape[:2])}, "
                f"got {tuple(mask.shape)}"
            )
        return context.to(x_t.dtype), None if mask is None else mask.to(torch.bool)

    def _run(self, block: nn.Module, *args: torch.Tensor | None) -> torch.Tensor:
        """``block(*args)``, recomputed in the backward pass under gradient checkpointing."""
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            out: torch.Tensor = checkpoint(block, *args, use_reentrant=False)
            return out
        result: torch.Tensor = block(*args)
        return result

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None
    ) -> torch.Tensor:
        """Predict from ``x_t`` ``(B, C, H, W)`` at training index ``t`` ``(B,)``."""
        h = self._check_inputs(x_t, t, cond)
        emb = self._embedding(t, cond, x_t)
        context, mask = self._context(cond, x_t)

        h = self.conv_in(h)
        skips = [h]
        run = self._run
        k = 0
        for level in range(self.num_levels):
            for _ in range(self.num_res_blocks):
                h = run(self.down_res[k], h, emb)
                if str(k) in self.down_attn:
                    h = run(self.down_attn[str(k)], h, context, mask)
                skips.append(h)
                k += 1
            if level < self.num_levels - 1:
                h = self.downsample[level](h)
                skips.append(h)

        h = run(self.mid_res1, h, emb)
        h = run(self.mid_res2, run(self.mid_attn, h, context, mask), emb)

        k = 0
        for i, level in enumerate(reversed(range(self.num_levels))):
            for _ in range(self.num_res_blocks + 1):
                h = run(self.up_res[k], torch.cat([h, skips.pop()], dim=1), emb)
                if str(k) in self.up_attn:
                    h = run(self.up_attn[str(k)], h, context, mask)
                k += 1
            if level > 0:
                h = self.upsample[i](h)

        return self.conv_out(F.silu(self.norm_out(h)))


def _res_block(p: UNetParams, emb_dim: int, c_in: int, c_out: int) -> ResBlock:
    """A residual block with the U-Net's groups, dropout and time injection."""
    return ResBlock(c_in, c_out, emb_dim, p.groups, p.dropout, p.time_injection == "scale-shift")


def _attention_block(p: UNetParams, channels: int) -> AttentionBlock:
    """An attention block with the U-Net's heads, groups and context width."""
    return AttentionBlock(channels, p.num_heads, p.groups, p.context_dim)
