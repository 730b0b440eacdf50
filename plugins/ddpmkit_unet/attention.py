"""Attention blocks of the U-Net: self-attention over pixels (Ho et al. 2020) and
cross-attention to a token sequence (Rombach et al. 2022), both residual.

Every block keeps the dtype rules of the denoiser contract: it computes in the dtype of its
inputs, or in whatever dtype ``torch.autocast`` chooses for each operation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from torch import nn

from ddpmkit_unet.blocks import zero_init


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``(B, L, C)`` -> ``(B, heads, L, C / heads)``."""
    b, n, c = x.shape
    return x.view(b, n, heads, c // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``(B, heads, L, d)`` -> ``(B, L, heads * d)``."""
    b, heads, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, heads * d)


def _to_tokens(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, H * W, C)``."""
    return x.flatten(2).transpose(1, 2)


def _to_map(tokens: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``(B, H * W, C)`` -> ``(B, C, H, W)`` shaped like ``like``."""
    return tokens.transpose(1, 2).reshape(like.shape)


class SelfAttention2d(nn.Module):
    """Multi-head self-attention over the pixels of a feature map (Ho et al. 2020), residual."""

    def __init__(self, channels: int, num_heads: int, groups: int) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"{channels} channels cannot be split into {num_heads} heads")
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = zero_init(nn.Linear(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, C, H, W)``."""
        q, k, v = self.qkv(_to_tokens(self.norm(x))).chunk(3, dim=-1)
        heads = self.num_heads
        out = F.scaled_dot_product_attention(
            _split_heads(q, heads), _split_heads(k, heads), _split_heads(v, heads)
        )
        return x + _to_map(self.proj(_merge_heads(out)), x)


class CrossAttention2d(nn.Module):
    """Pixels attend to a token sequence with a key padding mask (Rombach et al. 2022), residual."""

    def __init__(self, channels: int, context_dim: int, num_heads: int, groups: int) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"{channels} channels cannot be split into {num_heads} heads")
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(groups, channels)
        self.q = nn.Linear(channels, channels)
        self.kv = nn.Linear(context_dim, 2 * channels)
        self.proj = zero_init(nn.Linear(channels, channels))

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x`` ``(B, C, H, W)``, ``context`` ``(B, L, D)``, ``mask`` ``(B, L)`` (True: real)."""
        heads = self.num_heads
        q = _split_heads(self.q(_to_tokens(self.norm(x))), heads)
        k, v = (_split_heads(z, heads) for z in self.kv(context).chunk(2, dim=-1))
        attn_mask = None
        keep: torch.Tensor | None = None
        if mask is not None:
            # A sample whose tokens are all masked has nothing to attend to: let it attend to
            # everything (avoiding a NaN softmax) and then drop its cross-attention output.
            keep = mask.any(dim=-1)
            attn_mask = (mask | ~keep[:, None])[:, None, None, :]
        out = self.proj(_merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask)))
        if keep is not None:
            out = out * keep[:, None, None].to(out.dtype)
        return x + _to_map(out, x)


class AttentionBlock(nn.Module):
    """Self-attention, then cross-attention when ``context_dim > 0`` (Ho et al.; Rombach et al.)."""

    def __init__(self, channels: int, num_heads: int, groups: int, context_dim: int = 0) -> None:
        super().__init__()
        self.self_attn = SelfAttention2d(channels, num_heads, groups)
        self.cross_attn = (
            CrossAttention2d(channels, context_dim, num_heads, groups) if context_dim > 0 else None
        )

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, C, H, W)``; cross-attention is skipped without ``context``."""
        x = self.self_attn(x)
        if self.cross_attn is not None and context is not None:
            x = self.cross_attn(x, context, mask)
        return x
