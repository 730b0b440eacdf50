"""Pretrained Hugging Face ``transformers`` models from a local folder: the ``hf-text``
conditioner (a text encoder such as BERT). Needs ``pip install 'ddpmkit[transformers]'``;
nothing is ever downloaded (``local_files_only=True``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

try:
    import transformers
except ImportError as exc:  # reported by `ddpmkit plugins`, an error only when a pipeline asks
    raise ImportError(
        "the hf-text and hf-clip components need the transformers package: "
        "pip install 'ddpmkit[transformers]'"
    ) from exc

import torch
from pydantic import Field
from torch import nn

from ddpmkit import Batch, Conditioner, Conditioning, ConfigError, Params
from ddpmkit_conditioning.text.conditioner import as_captions


def local_folder(path: str, what: str) -> Path:
    """``path`` as an existing folder, or a ``ConfigError`` naming ``what`` (a params key)."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"{what}: {path!r} is not a folder (a model saved with save_pretrained)")
    return folder


def load_pretrained(loader: Any, folder: Path, what: str) -> Any:
    """``loader.from_pretrained(folder, local_files_only=True)``; failures name ``what``."""
    try:
        return loader.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"{what}: cannot load {folder} with transformers: {exc}") from exc


class HFTextConditionerParams(Params):
    """Parameters of the ``hf-text`` conditioner."""

    path: str = Field(
        ...,
        description=(
            "A local folder with a transformers text model and its tokenizer (both written by "
            "save_pretrained); never downloaded."
        ),
    )
    max_length: int = Field(
        16, ge=2, le=4096, description="Tokens per caption (the tokenizer's specials included)."
    )
    pooling: Literal["mean", "first", "pooler"] = Field(
        "mean",
        description=(
            "The pooled vector: the mean over real tokens, the first token ([CLS]), or the "
            "model's own pooler_output."
        ),
    )
    trainable: bool = Field(
        False, description="Fine-tune the encoder with the denoiser (default: frozen)."
    )


class HFTextConditioner(Conditioner):
    """Captions through a pretrained ``transformers`` encoder (``AutoTokenizer`` and
    ``AutoModel`` from a local folder): ``last_hidden_state`` as the cross-attention context
    (zero on padding), the pooled vector added to the time embedding, the empty caption as the
    null condition (as GLIDE's). Frozen by default: kept in eval mode (no dropout), its weights
    out of the optimizer."""

    Params = HFTextConditionerParams
    params: HFTextConditionerParams

    def __init__(self, params: HFTextConditionerParams | None = None) -> None:
        super().__init__(params)
        p = self.params
        folder = local_folder(p.path, "hf-text.path")
        self.tokenizer = load_pretrained(transformers.AutoTokenizer, folder, "hf-text.path")
        self.model: nn.Module = load_pretrained(transformers.AutoModel, folder, "hf-text.path")
        self.model.requires_grad_(p.trainable)
        self.model.train(False)
        self.embedding_dim = self.context_dim = int(self.model.config.hidden_size)

    def train(self, mode: bool = True) -> HFTextConditioner:
        """Switch modes; a frozen encoder stays in eval mode."""
        super().train(mode)
        self.model.train(mode and self.params.trainable)
        return self

    def forward(self, raw: Sequence[str]) -> Conditioning:
        """Encode a batch of captions."""
        p = self.params
        batch = self.tokenizer(
            as_captions(raw),
            padding="max_length",
            truncation=True,
            max_length=p.max_length,
            return_tensors="pt",
        )
        device = next(self.model.parameters()).device
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device).bool()
        with torch.set_grad_enabled(torch.is_grad_enabled() and p.trainable):
            out = self.model(input_ids=ids, attention_mask=mask.long())
        tokens = out.last_hidden_state * mask[..., None].to(out.last_hidden_state.dtype)
        if p.pooling == "mean":
            pooled = tokens.sum(1) / mask.sum(1, keepdim=True).to(tokens.dtype)
        elif p.pooling == "first":
            pooled = tokens[:, 0]
        else:
            pooled = getattr(out, "pooler_output", None)
            if pooled is None:
                raise ConfigError("hf-text.pooling = 'pooler': this model has no pooler_output")
        return Conditioning(embedding=pooled, context=tokens, context_mask=mask)

    def null(self, batch_size: int, device: torch.device) -> Conditioning:
        """The null condition: the empty caption for every sample."""
        return self.forward([""] * batch_size)

    def raw_from_batch(self, batch: Batch) -> list[str]:
        """A training batch's captions."""
        return list(batch.captions)

    def default_conditions(self, count: int) -> None:
        """None: sample with the data's own captions (the pipeline reads them)."""
        return None
