"""The ``class`` conditioner: a label as an embedding added to the denoiser's time embedding."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from ddpmkit import CheckContext, Conditioner, Conditioning, ConfigError, Params


class ClassConditionerParams(Params):
    """Parameters of the ``class`` conditioner."""

    num_classes: int = Field(..., ge=1, le=100_000, description="Number of classes K.")
    encoding: Literal["learned", "one-hot"] = Field(
        "learned",
        description=(
            "learned: a trainable embedding per class plus one for the null condition (as "
            "Ho & Salimans train it); one-hot: the K-dim indicator, zeros for the null."
        ),
    )
    embed_dim: int = Field(
        64, ge=1, le=65536, description="Width of a learned embedding (one-hot: K)."
    )


class ClassConditioner(Conditioner):
    """Labels ``(B,)`` in 0..K-1 -> ``Conditioning(embedding=(B, D))``; label -1 is the null
    condition. A denoiser adds the embedding to its time embedding (the U-Net and the toy MLP
    with ``cond_embed_dim = embedding_dim``), or feeds it through adaptive group norm (the
    U-Net's ``time_injection = "scale-shift"``, Dhariwal & Nichol 2021)."""

    Params = ClassConditionerParams
    params: ClassConditionerParams

    def __init__(self, params: ClassConditionerParams | None = None) -> None:
        super().__init__(params)
        p = self.params
        self.embedding_dim = p.num_classes if p.encoding == "one-hot" else p.embed_dim
        if p.encoding == "learned":
            # row K is the learned null condition
            self.table = nn.Embedding(p.num_classes + 1, p.embed_dim)

    def check(self, context: CheckContext) -> None:
        """The classes are the training data's."""
        data, K = context.dataset, self.params.num_classes
        if data is not None and data.num_classes != K:
            raise ConfigError(
                f"conditioner.num_classes = {K} but data {context.names.get('data', '')!r} "
                f"has {data.num_classes} classes"
            )

    def forward(self, raw: torch.Tensor) -> Conditioning:
        """Encode labels ``(B,)``; -1 marks the null condition."""
        labels = torch.as_tensor(raw, dtype=torch.long)
        K = self.params.num_classes
        if labels.ndim != 1 or bool(((labels < -1) | (labels >= K)).any()):
            raise ValueError(f"class: labels must be (B,) in -1 .. {K - 1}, got {labels.tolist()}")
        if self.params.encoding == "one-hot":
            onehot = nn.functional.one_hot(labels.clamp(min=0), K).float()
            return Conditioning(embedding=onehot * (labels >= 0).float()[:, None])
        device = self.table.weight.device
        return Conditioning(embedding=self.table(torch.where(labels < 0, K, labels).to(device)))

    def null(self, batch_size: int, device: torch.device) -> Conditioning:
        """The null condition: label -1 for every sample."""
        return self.forward(torch.full((batch_size,), -1, dtype=torch.long, device=device))

    def default_conditions(self, count: int) -> torch.Tensor:
        """Every class in turn: labels 0, 1, ..., K-1, 0, 1, ... (one grid row per class when
        the grid has K columns)."""
        return torch.arange(count) % self.params.num_classes
