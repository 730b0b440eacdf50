"""A noised CLIP (GLIDE, Nichol et al. 2021): an image encoder f(x_t, t) told the
timestep and a text encoder g(c), trained contrastively (Radford et al. 2021) on noised images."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from torch import nn

from ddpmkit import timestep_features
from ddpmkit_conditioning.text.encoder import TextEncoder
from ddpmkit_conditioning.text.tokenizer import WordTokenizer


def clip_loss(f: torch.Tensor, g: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """The symmetric InfoNCE loss of CLIP (Radford et al. 2021, Figure 3).

    ``f`` ``(B, D)`` and ``g`` ``(B, D)`` are unit image and text embeddings, row i of each a
    matching pair; ``logit_scale`` is log(1 / tau).
    """
    # logits_ij = exp(logit_scale) f_i . g_j: every image against every caption
    logits = logit_scale.exp() * f @ g.T
    # pair i is the right answer for image i (rows) and for caption i (columns)
    labels = torch.arange(f.shape[0], device=f.device)
    # the mean of the image->text and text->image cross-entropies
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


class _ConvBlock(nn.Module):
    """conv -> norm -> + time shift -> SiLU, then a stride-2 conv halving the resolution."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, padding=1)
        self.norm = nn.GroupNorm(1, width)
        self.time = nn.Linear(width, width)
        self.down = nn.Conv2d(width, width, 3, stride=2, padding=1)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm(self.conv(h)) + self.time(emb)[:, :, None, None])
        return F.silu(self.down(h))


class NoisedImageEncoder(nn.Module):
    """f(x_t, t): a small conv net whose blocks are shifted by an embedding of t (the noise
    level), global average pooling and a linear projection to the joint space."""

    def __init__(self, channels: int, width: int, levels: int, embed_dim: int) -> None:
        super().__init__()
        self.width = width
        self.time = nn.Sequential(nn.Linear(width, width), nn.SiLU())
        self.conv_in = nn.Conv2d(channels, width, 3, padding=1)
        self.blocks = nn.ModuleList(_ConvBlock(width) for _ in range(levels))
        self.proj = nn.Linear(width, embed_dim)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x_t`` ``(B, C, H, W)`` at training index ``t`` ``(B,)`` -> ``(B, embed_dim)``."""
        emb = self.time(timestep_features(t, self.width).to(x_t.dtype))
        h = self.conv_in(x_t)
        for block in self.blocks:
            h = block(h, emb)
        return self.proj(h.mean(dim=(2, 3)))


class NoisedClip(nn.Module):
    """Unit-norm image embeddings f(x_t, t) and text embeddings g(c) in one D-dim space, and
    the learned temperature of the contrastive loss (initialised to tau = 0.07 as in CLIP).

    The text tower is the ``text`` conditioner's encoder (the same tokenizer and Transformer)
    with a linear projection of its pooled ``<cls>`` vector.
    """

    def __init__(
        self,
        *,
        channels: int,
        vocabulary: Sequence[str],
        embed_dim: int = 32,
        image_width: int = 32,
        image_levels: int = 2,
        text_width: int = 32,
        text_layers: int = 2,
        text_heads: int = 4,
        max_length: int = 16,
    ) -> None:
        super().__init__()
        self.config: dict[str, Any] = {
            "channels": channels,
            "vocabulary": list(vocabulary),
            "embed_dim": embed_dim,
            "image_width": image_width,
            "image_levels": image_levels,
            "text_width": text_width,
            "text_layers": text_layers,
            "text_heads": text_heads,
            "max_length": max_length,
        }
        """The constructor's arguments: what rebuilds this network from its saved weights."""
        self.tokenizer = WordTokenizer(vocabulary, max_length)
        self.image = NoisedImageEncoder(channels, image_width, image_levels, embed_dim)
        self.text = TextEncoder(
            len(self.tokenizer), max_length, text_width, text_layers, text_heads
        )
        self.text_proj = nn.Linear(text_width, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def image_features(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """f(x_t, t) / |f(x_t, t)|, ``(B, D)``."""
        return F.normalize(self.image(x_t, t), dim=-1)

    def text_features(self, captions: Sequence[str]) -> torch.Tensor:
        """g(c) / |g(c)|, ``(B, D)``."""
        ids, mask = self.tokenizer.encode(captions)
        device = self.logit_scale.device
        _, pooled = self.text(ids.to(device), mask.to(device))
        return F.normalize(self.text_proj(pooled), dim=-1)

    def loss(
        self, x_t: torch.Tensor, t: torch.Tensor, captions: Sequence[str]
    ) -> tuple[torch.Tensor, float]:
        """The contrastive loss of a batch of (noised image, caption) pairs, and the fraction of
        images whose best-scoring caption in the batch reads like their own."""
        f, g = self.image_features(x_t, t), self.text_features(captions)
        best = (f @ g.T).argmax(1).tolist()
        accuracy = sum(captions[j] == c for j, c in zip(best, captions, strict=True)) / len(best)
        return clip_loss(f, g, self.clipped_logit_scale()), accuracy

    def clipped_logit_scale(self) -> torch.Tensor:
        """log(1 / tau), clipped at log 100 as CLIP clips it."""
        return self.logit_scale.clamp(max=math.log(100.0))

    def temperature_inverse(self) -> torch.Tensor:
        """1 / tau = exp(logit_scale), clipped at 100."""
        return self.clipped_logit_scale().exp()
