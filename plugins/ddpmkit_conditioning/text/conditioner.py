"""The ``text`` conditioner: captions through a small Transformer trained with the model,
the token sequence for cross-attention and the pooled vector for the time embedding."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from pydantic import Field, field_validator, model_validator

from ddpmkit import (
    Batch,
    BuildContext,
    Conditioner,
    Conditioning,
    ConfigError,
    Params,
    caption_words,
)
from ddpmkit_conditioning.text.encoder import TextEncoder
from ddpmkit_conditioning.text.tokenizer import WordTokenizer


class TextConditionerParams(Params):
    """Parameters of the ``text`` conditioner."""

    vocabulary: list[str] | None = Field(
        None,
        description=(
            "The words the tokenizer knows (others become <unk>); absent: the pipeline fills "
            "in the words of the data's captions."
        ),
    )
    max_length: int = Field(
        16, ge=1, le=1024, description="Tokens per caption, the leading <cls> included."
    )
    width: int = Field(64, ge=1, le=8192, description="D: the width of the tokens and pool.")
    layers: int = Field(2, ge=0, le=64, description="Transformer blocks.")
    heads: int = Field(4, ge=1, le=256, description="Attention heads; must divide width.")

    @field_validator("vocabulary")
    @classmethod
    def _plain_words(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        odd = [w for w in v if caption_words(w) != [w]]
        if odd or len(set(v)) != len(v):
            raise ValueError(
                "vocabulary must list distinct lower-case words of letters and digits"
                + (f"; not words: {odd[:5]}" if odd else "")
            )
        return v

    @model_validator(mode="after")
    def _heads_divide_width(self) -> TextConditionerParams:
        if self.width % self.heads:
            raise ValueError(f"heads = {self.heads} must divide width = {self.width}")
        return self


def as_captions(raw: Any) -> list[str]:
    """A batch of raw text conditions as a list of strings (a ``ValueError`` otherwise)."""
    if isinstance(raw, str) or not isinstance(raw, Sequence):
        raise ValueError(f"text conditions must be a sequence of strings, got {type(raw).__name__}")
    if not all(isinstance(c, str) for c in raw):
        raise ValueError("text conditions must all be strings")
    return list(raw)


class CaptionConditioner(Conditioner):
    """What every conditioner of captions shares: the empty caption is the null condition,
    training reads the batch's captions, and sampling (without ``sample.prompts``) the data's
    own captions, which the pipeline reads."""

    def null(self, batch_size: int, device: torch.device) -> Conditioning:
        """The null condition: the empty caption for every sample."""
        return self.forward([""] * batch_size)

    def raw_from_batch(self, batch: Batch) -> list[str]:
        """A training batch's captions."""
        return list(batch.captions)

    def default_conditions(self, count: int) -> None:
        """None: sample with the data's own captions (the pipeline reads them)."""
        return None


class TextConditioner(CaptionConditioner):
    """Captions ``(B,)`` -> ``Conditioning(embedding (B, D), context (B, L, D), context_mask)``.

    The GLIDE recipe (Nichol et al. 2021) at toy scale: a word-level tokenizer and a
    Transformer trained with the denoiser; its token sequence reaches the U-Net through
    cross-attention (``context_dim = D``) and its pooled ``<cls>`` vector is added to the time
    embedding (``cond_embed_dim = D``). The null condition is the empty caption.
    """

    Params = TextConditionerParams
    params: TextConditionerParams

    @classmethod
    def wire(cls, context: BuildContext) -> dict[str, Any]:
        """In a pipeline: the words of the data's captions as the vocabulary."""
        vocabulary = context.caption_vocabulary()
        return {} if vocabulary is None else {"vocabulary": vocabulary}

    def __init__(self, params: TextConditionerParams | None = None) -> None:
        super().__init__(params)
        p = self.params
        if p.vocabulary is None:
            raise ConfigError(
                "text: needs a vocabulary (a pipeline fills it in from the data's captions)"
            )
        self.tokenizer = WordTokenizer(p.vocabulary, p.max_length)
        self.encoder = TextEncoder(len(self.tokenizer), p.max_length, p.width, p.layers, p.heads)
        self.embedding_dim = self.context_dim = p.width

    def forward(self, raw: Sequence[str]) -> Conditioning:
        """Encode a batch of captions; the empty caption is the null condition."""
        ids, mask = self.tokenizer.encode(as_captions(raw))
        device = self.encoder.token.weight.device
        tokens, pooled = self.encoder(ids.to(device), mask.to(device))
        return Conditioning(embedding=pooled, context=tokens, context_mask=mask.to(device))
