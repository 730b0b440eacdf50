"""Pretrained Hugging Face ``transformers`` models from a local folder: the ``hf-text``
conditioner (a text encoder such as BERT) and ``hf-clip`` guidance (a CLIPModel). Needs
``pip install 'ddpmkit[transformers]'``; nothing is ever downloaded (``local_files_only``)."""

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

from ddpmkit import Conditioning, ConfigError, Params
from ddpmkit_conditioning.clip.guidance import ContrastiveGuidance
from ddpmkit_conditioning.text.conditioner import CaptionConditioner, as_captions


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


class HFTextConditioner(CaptionConditioner):
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


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
"""The per-channel mean and std OpenAI's CLIP normalises its [0, 1] input images with."""


class HFClipGuidanceParams(Params):
    """Parameters of ``hf-clip`` guidance."""

    path: str = Field(
        ...,
        description=(
            "A local folder with a transformers CLIPModel and its tokenizer (both written by "
            "save_pretrained); never downloaded."
        ),
    )
    scale: float = Field(
        1.0, ge=0.0, le=1e6, description="Guidance scale s (0: the unguided model)."
    )
    max_length: int | None = Field(
        None, ge=2, le=4096, description="Tokens per prompt (absent: the model's maximum)."
    )
    mean: tuple[float, float, float] = Field(
        CLIP_MEAN, description="Per-channel mean subtracted from images in [0, 1]."
    )
    std: tuple[float, float, float] = Field(
        CLIP_STD, description="Per-channel std images in [0, 1] are divided by."
    )


class HFClipGuidance(ContrastiveGuidance):
    """CLIP guidance with a pretrained ``transformers`` CLIPModel (Radford et al. 2021) from a
    local folder: eps~ = eps - sqrt(1 - abar_t) s grad_{x_t} (f(x_t) . g(c) / tau).

    f is the model's image tower on x_t mapped from [-1, 1] to [0, 1], resized (bilinear) to
    the model's input size and normalised with ``mean`` and ``std``; g its text tower on the
    prompt. Such a CLIP never saw noisy images and ignores t: GLIDE trains a noised
    CLIP (``train-clip`` and ``clip``) because this works poorly at high noise levels.
    """

    Params = HFClipGuidanceParams
    params: HFClipGuidanceParams

    def __init__(self, params: HFClipGuidanceParams | None = None) -> None:
        super().__init__(params)
        p = self.params
        self.scale = p.scale
        folder = local_folder(p.path, "hf-clip.path")
        self.tokenizer = load_pretrained(transformers.AutoTokenizer, folder, "hf-clip.path")
        self.model: Any = load_pretrained(transformers.CLIPModel, folder, "hf-clip.path")
        self.model.requires_grad_(False)
        self.model.train(False)
        vision = self.model.config.vision_config
        self.image_size = int(vision.image_size)
        self.max_length = p.max_length or int(self.model.config.text_config.max_position_embeddings)

    def image_features(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The CLIP image embedding of ``x_t`` ``(B, 3, H, W)``, unit length."""
        if x_t.ndim != 4 or x_t.shape[1] != 3:
            raise ValueError(f"hf-clip needs RGB images (B, 3, H, W), got {tuple(x_t.shape)}")
        model = self.model.to(x_t.device)
        size = (self.image_size, self.image_size)
        # [-1, 1] -> [0, 1], resized to the model's input, normalised per channel
        pixels = torch.nn.functional.interpolate((x_t + 1) / 2, size=size, mode="bilinear")
        mean = torch.tensor(self.params.mean, device=x_t.device, dtype=x_t.dtype)
        std = torch.tensor(self.params.std, device=x_t.device, dtype=x_t.dtype)
        pixels = (pixels - mean[:, None, None]) / std[:, None, None]
        return _unit(model.get_image_features(pixel_values=pixels))

    def text_features(self, captions: Sequence[str]) -> torch.Tensor:
        """The CLIP text embedding of each caption, unit length."""
        batch = self.tokenizer(
            list(captions),
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        device = next(self.model.parameters()).device
        features = self.model.get_text_features(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
        )
        return _unit(features)

    def logit_scale(self) -> float:
        """1 / tau = exp(logit_scale) of the pretrained model."""
        return float(self.model.logit_scale.exp())


def _unit(features: Any) -> torch.Tensor:
    """Projected CLIP features (a tensor, or the output object of transformers >= 5) scaled to
    unit length."""
    tensor = features if torch.is_tensor(features) else features.pooler_output
    return torch.nn.functional.normalize(tensor, dim=-1)
