"""The ``train-clip`` stage: a noised CLIP trained on (x_t, caption) pairs of the pipeline's
data, noised by the pipeline's own forward process (GLIDE's noised CLIP)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from pydantic import Field, model_validator

from ddpmkit import (
    Batch,
    CheckContext,
    ConfigError,
    Dataset,
    DdpmkitError,
    Params,
    Stage,
    StageContext,
    load_network,
    noised_batch,
)
from ddpmkit_conditioning.clip.model import NoisedClip

CONFIG_FILE = "clip.json"
"""The network's constructor arguments (the vocabulary included), beside its weights."""


class TrainClipParams(Params):
    """Parameters of the ``train-clip`` stage."""

    steps: int = Field(1000, ge=1, le=10_000_000, description="Optimizer steps.")
    batch_size: int = Field(64, ge=2, le=1_000_000, description="(image, caption) pairs per step.")
    lr: float = Field(1e-3, gt=0.0, le=1.0, description="AdamW learning rate.")
    embed_dim: int = Field(32, ge=1, le=8192, description="D: the joint embedding width.")
    image_width: int = Field(32, ge=1, le=4096, description="Channels of the image encoder.")
    image_levels: int = Field(
        2, ge=1, le=8, description="Stride-2 blocks of the image encoder before pooling."
    )
    text_width: int = Field(32, ge=1, le=8192, description="Width of the text Transformer.")
    text_layers: int = Field(2, ge=0, le=64, description="Blocks of the text Transformer.")
    text_heads: int = Field(4, ge=1, le=256, description="Heads; must divide text_width.")
    max_length: int = Field(16, ge=1, le=1024, description="Tokens per caption (<cls> included).")
    log_every: int = Field(50, ge=1, le=1_000_000, description="Steps between logged means.")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> TrainClipParams:
        if self.text_width % self.text_heads:
            raise ValueError(
                f"text_heads = {self.text_heads} must divide text_width = {self.text_width}"
            )
        return self


class TrainClipStage(Stage):
    """Train a :class:`NoisedClip` with the symmetric InfoNCE loss on noised images.

    Each step draws a batch of the pipeline's data, t ~ U{0..T-1} and eps ~ N(0, I), forms
    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps with the pipeline's schedule
    (``DiffusionModel.q_sample``) and contrasts f(x_t, t) with g(caption) over the batch. The
    vocabulary is the data's caption words. Writes ``model.safetensors`` and ``clip.json``.
    """

    Params = TrainClipParams
    params: TrainClipParams

    def check(self, context: CheckContext) -> None:
        """The data must be images."""
        dataset = context.dataset
        if dataset is not None and len(dataset.shape) != 3:
            raise ConfigError(f"train-clip needs image data (C, H, W), not {dataset.shape}")

    def build_network(self, dataset: Dataset) -> NoisedClip:
        """The untrained network for ``dataset``'s channels and caption words."""
        p = self.params
        return NoisedClip(
            channels=dataset.channels,
            vocabulary=dataset.caption_vocabulary(),
            embed_dim=p.embed_dim,
            image_width=p.image_width,
            image_levels=p.image_levels,
            text_width=p.text_width,
            text_layers=p.text_layers,
            text_heads=p.text_heads,
            max_length=p.max_length,
        )

    def run(self, context: StageContext) -> None:
        """Train and save the network into the stage's folder."""
        network = self.build_network(context.dataset)
        model = context.model

        def loss_fn(
            batch: Batch, generator: torch.Generator
        ) -> tuple[torch.Tensor, dict[str, float]]:
            # x_t ~ q(x_t | x_0) at t ~ U{0..T-1}: the images CLIP guidance will see
            x_t, t = noised_batch(model, batch.images.to(context.device), generator)
            loss, accuracy = network.loss(x_t, t, batch.captions)
            return loss, {"accuracy": accuracy}

        p = self.params
        context.fit(
            network,
            loss_fn,
            steps=p.steps,
            batch_size=p.batch_size,
            lr=p.lr,
            log_every=p.log_every,
        )
        (context.directory / CONFIG_FILE).write_text(json.dumps(network.config, indent=2) + "\n")


def load_noised_clip(folder: Path, *, what: str) -> NoisedClip:
    """The network a ``train-clip`` stage saved in ``folder``, frozen, in eval mode."""
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise DdpmkitError(f"{what}: {config_path} does not exist (has its stage run?)")
    network = NoisedClip(**json.loads(config_path.read_text()))
    loaded: NoisedClip = load_network(network, folder, what=what)  # type: ignore[assignment]
    return loaded
