"""The small value types components exchange: conditionings, predictions, sampler steps,
data examples and batches."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import attrs
import torch

# ---------------------------------------------------------------------------------------------
# Value types
# ---------------------------------------------------------------------------------------------


@attrs.frozen
class Conditioning:
    """What a :class:`Conditioner` hands a :class:`Denoiser`; every field is optional.

    * ``channels``: ``(B, C_c, H, W)`` extra input channels concatenated to ``x_t``
      (a low-resolution image, a mask...).
    * ``embedding``: ``(B, D_e)`` vector added to the denoiser's time embedding (a class label,
      a pooled text vector, a noise-augmentation level...).
    * ``context``: ``(B, L, D_c)`` token sequence the denoiser attends to with cross-attention,
      with ``context_mask`` ``(B, L)`` (``True`` marks a real token).
    """

    channels: torch.Tensor | None = None
    embedding: torch.Tensor | None = None
    context: torch.Tensor | None = None
    context_mask: torch.Tensor | None = None

    def where(self, mask: torch.Tensor, other: Conditioning) -> Conditioning:
        """Row b from ``other`` where ``mask[b]`` is true, else from this one (condition
        dropout: ``cond.where(drop, null)``)."""
        fields: dict[str, torch.Tensor | None] = {}
        for name in ("channels", "embedding", "context", "context_mask"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine is None or theirs is None:
                if mine is not theirs:
                    raise ValueError(f"Conditioning.where: {name} is set on one side only")
                fields[name] = None
                continue
            row = mask.to(mine.device).reshape(-1, *([1] * (mine.ndim - 1)))
            fields[name] = torch.where(row, theirs.to(mine.device), mine)
        return Conditioning(**fields)

    @staticmethod
    def cat(parts: Sequence[Conditioning]) -> Conditioning:
        """Concatenate conditionings along the batch; a field must be set in all or none."""
        fields: dict[str, torch.Tensor | None] = {}
        for name in ("channels", "embedding", "context", "context_mask"):
            values = [getattr(p, name) for p in parts]
            if all(v is None for v in values):
                fields[name] = None
            elif any(v is None for v in values):
                raise ValueError(f"Conditioning.cat: {name} is set in some parts, not all")
            else:
                fields[name] = torch.cat(values)
        return Conditioning(**fields)


@attrs.frozen
class Prediction:
    """A denoiser's output in every form a sampler needs.

    ``eps`` is the predicted noise, ``x0`` the predicted clean sample, both shaped like ``x_t``;
    ``output`` is the raw network output (its first ``C`` channels are what the
    parameterization converts; later objectives may emit more channels).
    """

    eps: torch.Tensor
    x0: torch.Tensor
    output: torch.Tensor


@attrs.frozen
class SamplerStep:
    """What a sampler passes to its ``callback`` after each step.

    ``index`` counts steps taken (0-based) out of ``total``; ``t`` is the training timestep the
    step started from; ``x`` is the new sample and ``x0`` the prediction of the clean sample.
    """

    index: int
    total: int
    t: int
    x: torch.Tensor
    x0: torch.Tensor


PredictFn = Callable[[torch.Tensor, torch.Tensor, "Conditioning | None"], Prediction]
"""``(x_t, t, cond) -> Prediction``: how samplers and guidance ask for a prediction."""

SamplerCallback = Callable[[SamplerStep], None]

ZERO_TERMINAL_SNR = 2e-10
"""SNR(T) at or below which a schedule counts as zero-terminal-SNR (Lin et al. 2024): the
bundled rescale ends on abar_T <= 1e-10; the cosine schedule's own end is 2.4e-9."""


_WORD = re.compile(r"[a-z0-9]+")


def caption_words(text: str) -> list[str]:
    """The words of a caption: its lower-cased runs of letters and digits (punctuation drops)."""
    return _WORD.findall(text.lower())


@attrs.frozen
class Example:
    """One example: ``image`` ``(C, H, W)`` in ``[-1, 1]``, a ``label`` (-1: none), a caption."""

    image: torch.Tensor
    label: int = -1
    caption: str = ""


@attrs.frozen
class Batch:
    """A batch of examples: ``images`` ``(B, C, H, W)``, ``labels`` ``(B,)``, ``captions``."""

    images: torch.Tensor
    labels: torch.Tensor
    captions: tuple[str, ...]
