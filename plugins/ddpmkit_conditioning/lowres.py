"""The ``low-res`` conditioner of a cascade's super-resolution model, with noise conditioning
augmentation (Ho et al. 2021, "Cascaded Diffusion Models", section 4.2)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

import torch
from pydantic import Field

from ddpmkit import Batch, Conditioning, randn_like, timestep_features
from ddpmkit_conditioning.cascade import load_stage_samples
from ddpmkit_conditioning.image import ImageChannels, ImageParams, resize

if TYPE_CHECKING:  # pragma: no cover
    from ddpmkit import DiffusionModel


class LowResConditionerParams(ImageParams):
    """Parameters of the ``low-res`` conditioner."""

    low_res: int = Field(
        8,
        ge=1,
        le=4096,
        description="Side of the low-resolution image; in training, the data averaged down to it.",
    )
    augment: Literal["noise", "none"] = Field(
        "noise",
        description=(
            "noise: forward-diffuse the low-resolution image to a level s, given to the model "
            "as an embedding (Ho et al. 2021); none: the image as it is."
        ),
    )
    max_level: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description=(
            "Training: each example's level a ~ U[0, max_level], a fraction of the chain: "
            "s = round(a (T - 1))."
        ),
    )
    level: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Sampling: the augmentation level a of every condition (sweep it).",
    )
    embed_dim: int = Field(
        32, ge=2, le=65536, description="Width of the level's sinusoidal embedding."
    )
    stage: str | None = Field(
        None,
        description=(
            "At sampling: the `[stages.<name>]` (a `diffusion` stage, the cascade's base model) "
            "whose samples are the low-resolution images; absent: `data`'s images."
        ),
    )


class LowResConditioner(ImageChannels):
    """z = resize(y) for a low-resolution image y ``(B, C, h, w)``, with Gaussian noise
    conditioning augmentation (Ho et al. 2021, section 4.2).

    In training, y is the batch averaged down to ``low_res``, and each example gets a level
    s = round(a (T - 1)), a ~ U[0, ``max_level``]; y is forward-diffused to it with the model's
    own q(z_s | y) = N(sqrt(abar_s) y, (1 - abar_s) I) before it is enlarged, and s reaches the
    model as a sinusoidal embedding, so the model learns to trust a noisier z less. At
    sampling every condition has the ``level`` setting, and the noise comes from ``seed``, so
    one raw condition always encodes the same. ``channels`` as the ``image`` conditioner's,
    with the whole image known; the null condition is zeros, embedding included (sinusoidal
    features are never all zero).
    """

    Params = LowResConditionerParams
    params: LowResConditionerParams
    stage_params: ClassVar[tuple[str, ...]] = ("stage",)
    _model: tuple[DiffusionModel, ...] = ()

    def __init__(self, params: LowResConditionerParams | None = None) -> None:
        super().__init__(params)
        self.embedding_dim = self.params.embed_dim if self.params.augment == "noise" else 0
        self.stage_images: torch.Tensor | None = None

    def attach(self, stages: Mapping[str, Path]) -> None:
        """Load the named stage's samples: the low-resolution images to sample with."""
        if self.params.stage is not None:
            self.stage_images = load_stage_samples(stages[self.params.stage])

    def bind(self, model: DiffusionModel) -> None:
        """Keep the model (in a tuple: not a submodule) for its forward process."""
        self._model = (model,)

    def levels(self, batch: int) -> tuple[torch.Tensor, torch.Generator]:
        """The training indices s ``(B,)`` (or the sampling setting) and the generator of the
        augmentation noise."""
        p, T = self.params, self._model[0].T
        if self.training:
            generator = self.next_generator()
            a = p.max_level * torch.rand(batch, generator=generator, dtype=torch.float64)
        else:
            generator = torch.Generator().manual_seed(p.seed)
            a = torch.full((batch,), p.level, dtype=torch.float64)
        return (a * (T - 1)).round().long(), generator

    def augment(self, y: torch.Tensor, s: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """z_s ~ q(z_s | y) = N(sqrt(abar_s) y, (1 - abar_s) I), the model's forward process
        (Ho et al. 2020, eq. 4) applied to the low-resolution image."""
        return self._model[0].q_sample(y, s.to(y.device), randn_like(y, generator))

    def forward(self, raw: torch.Tensor) -> Conditioning:
        """Encode low-resolution images ``(B, C, h, w)``."""
        y = torch.as_tensor(raw).float()
        C = self.params.channels
        if y.ndim != 4 or y.shape[1] != C:
            raise ValueError(f"low-res: raw conditions must be (B, {C}, h, w): {tuple(y.shape)}")
        known = torch.ones_like(y[:, :1])
        if self.params.augment == "none":
            return Conditioning(channels=self.channels(y, known))
        if not self._model:
            raise ValueError("low-res: noise augmentation needs the model: build one with it")
        # the level s of each example (drawn in training, the setting at sampling)
        s, generator = self.levels(y.shape[0])
        # forward-diffuse the low-resolution image to s, then enlarge it
        z = self.augment(y, s, generator)
        # s reaches the model beside the time step, as sinusoidal features
        embedding = timestep_features(s, self.params.embed_dim).to(y.device)
        return Conditioning(channels=self.channels(z, known), embedding=embedding)

    def null(self, batch_size: int, device: torch.device) -> Conditioning:
        """No image and no level: channels and embedding all zeros."""
        channels = super().null(batch_size, device).channels
        if self.params.augment == "none":
            return Conditioning(channels=channels)
        embedding = torch.zeros(batch_size, self.params.embed_dim, device=device)
        return Conditioning(channels=channels, embedding=embedding)

    def raw_from_batch(self, batch: Batch) -> torch.Tensor:
        """The batch's images averaged down to ``low_res``."""
        return resize(batch.images, self.params.low_res)

    def default_conditions(self, count: int) -> torch.Tensor:
        """The ``stage``'s samples, else ``data``'s images, at ``low_res`` (examples
        ``offset`` .. ``offset + count - 1``, cycled)."""
        images = self.stage_images
        if self.params.stage is None or images is None:
            return resize(self.data_images(count), self.params.low_res)
        start = self.params.offset
        return resize(
            images[[i % len(images) for i in range(start, start + count)]], self.params.low_res
        )
