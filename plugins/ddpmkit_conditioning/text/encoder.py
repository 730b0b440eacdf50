"""A small Transformer text encoder (Vaswani et al. 2017) in the pre-norm form of GPT-2 and
CLIP's text tower (Radford et al. 2021), over the word tokens of :class:`WordTokenizer`."""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from torch import nn


class _Block(nn.Module):
    """x + MHA(LN(x)) then x + MLP(LN(x)); attention sees only real tokens (the key mask)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``h`` ``(B, L, D)``, ``mask`` ``(B, L)`` (True: real token) -> ``(B, L, D)``."""
        b, length, width = h.shape
        # queries, keys and values per head: (B, heads, L, D / heads)
        q, k, v = (
            z.reshape(b, length, self.heads, width // self.heads).transpose(1, 2)
            for z in self.qkv(self.norm1(h)).chunk(3, dim=-1)
        )
        # softmax(q k^T / sqrt(d)) v over the real tokens only
        out = F.scaled_dot_product_attention(q, k, v, mask[:, None, None, :])
        h = h + self.proj(out.transpose(1, 2).reshape(b, length, width))
        # the position-wise feed-forward network
        return h + self.mlp(self.norm2(h))


class TextEncoder(nn.Module):
    """Token ids ``(B, L)`` and their mask -> ``(tokens (B, L, D), pooled (B, D))``.

    Token plus learned position embeddings, ``layers`` pre-norm Transformer blocks, a final
    LayerNorm. ``tokens`` is zero on padding (so it does not depend on how much padding there
    is); ``pooled`` is the output at the leading ``<cls>`` token. Every row needs at least one
    real token, which the tokenizer's ``<cls>`` guarantees.
    """

    def __init__(
        self, vocab_size: int, max_length: int, width: int, layers: int, heads: int
    ) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} cannot be split into {heads} heads")
        self.max_length = max_length
        self.token = nn.Embedding(vocab_size, width)
        self.position = nn.Parameter(torch.randn(max_length, width) * 0.01)
        self.blocks = nn.ModuleList(_Block(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)

    @property
    def width(self) -> int:
        """D, the width of every token vector and of the pooled vector."""
        return self.norm.normalized_shape[0]

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode ``ids`` ``(B, L)`` (``L <= max_length``) with ``mask`` (True: real token)."""
        length = ids.shape[1]
        if length > self.max_length:
            raise ValueError(f"{length} tokens but the encoder has {self.max_length} positions")
        h = self.token(ids) + self.position[:length]
        for block in self.blocks:
            h = block(h, mask)
        h = self.norm(h)
        return h * mask[..., None].to(h.dtype), h[:, 0]
