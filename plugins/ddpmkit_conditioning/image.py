"""The ``image`` conditioner: a conditioning image and its known-mask as extra input channels
of the denoiser (GLIDE inpainting, Nichol et al. 2021, section 3.3; Palette, Saharia et al.
2022)."""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from ddpmkit import (
    Batch,
    BuildContext,
    Conditioner,
    Conditioning,
    ConfigError,
    Dataset,
    Params,
    create,
)
from ddpmkit_conditioning.inpaint import Region, region_mask
from ddpmkit_conditioning.masks import MaskKind, draw_masks

Resize = Literal["bilinear", "bicubic", "nearest"]
DEFAULT_MASKS: tuple[MaskKind, ...] = ("rectangle", "half")


def resize(images: torch.Tensor, size: int, mode: Resize = "bilinear") -> torch.Tensor:
    """``(B, C, h, w)`` images resized to ``size`` x ``size``: returned as they are at that
    size, averaged over each output pixel's area when shrinking (no aliasing), interpolated
    with ``mode`` (half-pixel centres) when enlarging."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    if images.shape[-1] > size:
        return nn.functional.interpolate(images, size=(size, size), mode="area")
    if mode == "nearest":
        return nn.functional.interpolate(images, size=(size, size), mode="nearest")
    return nn.functional.interpolate(images, size=(size, size), mode=mode, align_corners=False)


class ImageParams(Params):
    """What every image conditioner takes: the image's shape, where its sampling images come
    from, and the seed of its training draws."""

    channels: int = Field(
        3,
        ge=1,
        le=1024,
        description="Channels of the conditioning image; in a pipeline, the data's.",
    )
    image_size: int = Field(
        16,
        ge=1,
        le=4096,
        description=(
            "Side of the denoiser's images, to which the conditioning image is resized; in a "
            "pipeline, the data's."
        ),
    )
    data: dict[str, Any] | None = Field(
        None,
        description=(
            "The images to sample with: a data set table (`type` and its params); absent: "
            "sampling needs conditions given from Python."
        ),
    )
    offset: int = Field(
        0, ge=0, le=10_000_000, description="Index of the first `data` example to sample with."
    )
    resize: Resize = Field(
        "bilinear",
        description="How a smaller conditioning image is enlarged (a larger one is averaged).",
    )
    seed: int = Field(0, ge=0, lt=2**32, description="Seed of the training draws (masks, levels).")


class ImageChannels(Conditioner):
    """Shared by the image conditioners: a conditioning image y ``(B, C, h, w)`` and a
    known-mask m ``(B, 1, H, W)`` become ``channels = [m * resize(y), m]`` ``(B, C + 1, H, W)``.

    The null condition is all zeros: no pixel known (m = 0) and so no image (m y = 0). Zeros
    alone would be ambiguous, since 0 is a real pixel value (mid-grey in [-1, 1]); the mask
    channel is the indicator that makes the null condition unlike any real image, as GLIDE's
    and Palette's inpainting models receive the mask beside the masked image. An all-unknown
    mask *is* the unconditional task, so with a mask the null needs no channel of its own.
    """

    params: ImageParams
    draws: torch.Tensor

    @classmethod
    def wire(cls, context: BuildContext) -> dict[str, Any]:
        """In a pipeline: the data's channels and image size."""
        if context.channels is None:
            return {}
        return {"channels": context.channels, "image_size": context.image_size}

    def __init__(self, params: ImageParams | None = None) -> None:
        super().__init__(params)
        p = self.params
        self.extra_channels = p.channels + 1
        # training draws so far: a buffer, so a checkpoint holds it and a resumed run draws on
        self.register_buffer("draws", torch.zeros((), dtype=torch.long))
        self.dataset: Dataset | None = None
        if p.data is not None:
            spec = dict(p.data)
            kind = spec.pop("type", None)
            if not isinstance(kind, str):
                raise ConfigError("conditioner.data: needs a `type` (a data set name)")
            self.dataset = create("dataset", kind, **spec)
            shape = tuple(self.dataset.shape)
            if len(shape) != 3 or shape[0] != p.channels:
                raise ConfigError(
                    f"conditioner.data: data {kind!r} has examples of shape {shape}; the "
                    f"conditioning image needs ({p.channels}, H, W)"
                )

    def next_generator(self) -> torch.Generator:
        """A CPU generator for the next training draw, seeded by (seed, draws so far): the
        draws are reproducible from the seed, and a resumed run continues them exactly."""
        generator = torch.Generator().manual_seed(self.params.seed * 1_000_003 + int(self.draws))
        self.draws += 1
        return generator

    def channels(self, y: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        """``[m * resize(y), m]``: the image where it is known (0 elsewhere), then the mask."""
        size = self.params.image_size
        y = resize(y, size, self.params.resize)
        known = resize(known.to(y.dtype), size, "nearest").round()
        return torch.cat([known * y, known], dim=1)

    def null(self, batch_size: int, device: torch.device) -> Conditioning:
        """No pixel known and no image: ``channels`` all zeros."""
        size = self.params.image_size
        zeros = torch.zeros(batch_size, self.extra_channels, size, size, device=device)
        return Conditioning(channels=zeros)

    def data_images(self, count: int) -> torch.Tensor:
        """Examples ``offset`` .. ``offset + count - 1`` of ``data`` (cycled)."""
        if self.dataset is None:
            raise ConfigError(
                f"conditioner.data: {type(self).__name__} samples with the images of a data "
                "set: give `data` (a data set table)"
            )
        start = self.params.offset
        indices = [i % len(self.dataset) for i in range(start, start + count)]
        return self.dataset.batch(indices).images


class ImageConditionerParams(ImageParams):
    """Parameters of the ``image`` conditioner."""

    masks: list[MaskKind] = Field(
        default_factory=lambda: list(DEFAULT_MASKS),
        min_length=1,
        description=(
            "Training masks, one drawn per example: `rectangle` (a random box), `half` (a "
            "random half: uncropping), `center` (the middle half), `border` (all but it)."
        ),
    )
    region: Region = Field(
        "right", description="At sampling: the part of each `data` image the model fills in."
    )


class ImageConditioner(ImageChannels):
    """Mask-conditioned inpainting and uncropping (GLIDE, Nichol et al. 2021, section 3.3).

    Raw conditions are ``(B, C + 1, h, w)``: an image and its known-mask (1 known, 0 to fill
    in), or ``(B, C, h, w)``, an image known everywhere. In training each example's mask is
    drawn at random (``masks``) and the model sees its own image masked; at sampling the
    images are ``data``'s with ``region`` unknown. A raw condition whose mask is all zeros
    encodes to exactly the null condition.
    """

    Params = ImageConditionerParams
    params: ImageConditionerParams

    def forward(self, raw: torch.Tensor) -> Conditioning:
        """Encode images with their masks (or images alone: all known)."""
        raw = torch.as_tensor(raw)
        C = self.params.channels
        if raw.ndim != 4 or raw.shape[1] not in (C, C + 1):
            raise ValueError(
                f"image: raw conditions must be (B, {C} or {C + 1}, H, W), got {tuple(raw.shape)}"
            )
        y = raw[:, :C].float()
        known = raw[:, C:] if raw.shape[1] == C + 1 else torch.ones_like(y[:, :1])
        return Conditioning(channels=self.channels(y, known))

    def raw_from_batch(self, batch: Batch) -> torch.Tensor:
        """The batch's images with a random known-mask each (GLIDE: erase random sections)."""
        images = batch.images
        B, _, H, W = images.shape
        known = draw_masks(self.params.masks, B, H, W, self.next_generator())
        return torch.cat([images, known.to(images.dtype)], dim=1)

    def default_conditions(self, count: int) -> torch.Tensor:
        """``data``'s images with ``region`` unknown."""
        images = self.data_images(count)
        known = region_mask(self.params.region, images.shape[2], images.shape[3])
        return torch.cat([images, known.expand(count, 1, -1, -1)], dim=1)
