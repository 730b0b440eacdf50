"""``shapes``: a procedural data set of one coloured geometric shape per image, with captions
(its reader of generated images is :class:`~ddpmkit_datasets.reader.ShapesAttributeReader`)."""

from __future__ import annotations

from typing import Literal, SupportsIndex

import numpy as np
import torch
from pydantic import Field, model_validator

from ddpmkit import Batch, Dataset, Example, Params, caption_words
from ddpmkit_datasets._cache import PixelCache, as_index
from ddpmkit_datasets._render import COLORS, SHAPES, ColorName, ShapeName, render

PositionName = Literal["left", "right", "top", "bottom", "center"]
POSITIONS: dict[PositionName, tuple[int, int, str]] = {
    "left": (-1, 0, "on the left"),
    "right": (1, 0, "on the right"),
    "top": (0, -1, "at the top"),
    "bottom": (0, 1, "at the bottom"),
    "center": (0, 0, "in the center"),
}
"""Each position: its direction ``(dx, dy)`` from the centre and its caption phrase."""

MARGIN = 0.02  # free space kept between a shape pushed to one side and the image border
JITTER = 0.04  # random shift of the position, as a fraction of the side


def _caption(shape: str, color: str, where: PositionName) -> str:
    """``"a {color} {shape} {position phrase}"``, the caption of every ``shapes`` example."""
    return f"a {color} {shape} {POSITIONS[where][2]}"


class ShapesParams(Params):
    """Parameters of :class:`ShapesDataset`."""

    image_size: int = Field(16, ge=8, le=128, description="Side of the square images in pixels.")
    num_examples: int = Field(10000, ge=1, le=10_000_000, description="Number of examples.")
    seed: int = Field(0, ge=0, description="Seed; example i depends only on (seed, i).")
    shapes: tuple[ShapeName, ...] = Field(
        SHAPES, min_length=1, description="Shapes to draw; the label is the index in this list."
    )
    colors: tuple[ColorName, ...] = Field(
        tuple(COLORS), min_length=1, description="Colours to paint the shapes with."
    )
    positions: tuple[PositionName, ...] = Field(
        tuple(POSITIONS), min_length=1, description="Where in the image a shape may sit."
    )
    min_size: float = Field(0.45, ge=0.2, le=0.8, description="Smallest shape, fraction of side.")
    max_size: float = Field(0.6, ge=0.2, le=0.8, description="Largest shape, fraction of side.")

    @model_validator(mode="after")
    def _check(self) -> ShapesParams:
        if self.min_size > self.max_size:
            raise ValueError(f"min_size {self.min_size} is larger than max_size {self.max_size}")
        for name in ("shapes", "colors", "positions"):
            if len(set(getattr(self, name))) != len(getattr(self, name)):
                raise ValueError(f"{name} lists a name more than once")
        return self


class ShapesDataset(Dataset):
    """One anti-aliased coloured shape per image on a dark background, with an English caption.

    Example ``i`` is a pure function of ``(seed, i)``: it draws its shape, colour, position,
    size and a small jitter from its own generator. Images are ``(3, S, S)`` in ``[-1, 1]``;
    the label is the index of the shape in ``params.shapes``; captions read like
    ``"a red circle on the left"``. Images are rendered on first use and cached.
    """

    Params = ShapesParams
    params: ShapesParams

    def __init__(self, params: ShapesParams | None = None) -> None:
        super().__init__(params)
        p = self.params
        self.channels = 3
        self.image_size = p.image_size
        self.num_classes = len(p.shapes)
        self._cache = PixelCache(p.num_examples, 3, p.image_size)
        self._labels = torch.full((p.num_examples,), -1, dtype=torch.long)
        self._captions: list[str] = [""] * p.num_examples

    def __len__(self) -> int:
        """Number of examples."""
        return self.params.num_examples

    def _layout(self, index: int) -> tuple[int, int, int, float, float, float]:
        """Shape, colour and position indices, then centre x, y and half-size (fractions)."""
        p = self.params
        rng = np.random.default_rng([p.seed, index])
        shape, color, where = (int(rng.integers(len(n))) for n in (p.shapes, p.colors, p.positions))
        half = float(rng.uniform(p.min_size, p.max_size)) / 2
        jx, jy = rng.uniform(-1.0, 1.0, size=2) * JITTER
        dx, dy, _ = POSITIONS[p.positions[where]]
        reach = 0.5 - 1.1 * half - MARGIN - JITTER  # shapes reach 1.1 half from their centre
        cx = 0.5 + dx * reach + (jx if dx == 0 else abs(jx) * dx)
        cy = 0.5 + dy * reach + (jy if dy == 0 else abs(jy) * dy)
        return shape, color, where, cx, cy, half

    def attributes(self, index: SupportsIndex) -> tuple[ShapeName, ColorName, PositionName]:
        """The ``(shape, color, position)`` names of example ``index``."""
        shape, color, where, *_ = self._layout(as_index(index, len(self)))
        p = self.params
        return p.shapes[shape], p.colors[color], p.positions[where]

    def caption(self, index: SupportsIndex) -> str:
        """The English caption of example ``index``, e.g. ``"a blue square at the top"``."""
        shape, color, where = self.attributes(index)
        return _caption(shape, color, where)

    def caption_vocabulary(self) -> list[str]:
        """The words of every caption these params can draw (without rendering any image)."""
        p = self.params
        return sorted(
            {
                word
                for shape in p.shapes
                for color in p.colors
                for where in p.positions
                for word in caption_words(_caption(shape, color, where))
            }
        )

    def _make(self, index: int) -> torch.Tensor:
        shape, color, _, cx, cy, half = self._layout(index)
        p = self.params
        self._labels[index] = shape
        self._captions[index] = self.caption(index)
        pixels = render(p.shapes[shape], p.colors[color], cx, cy, half, p.image_size)
        return torch.from_numpy(pixels)

    def __getitem__(self, index: SupportsIndex) -> Example:
        """The example at ``index``."""
        batch = self.batch([as_index(index, len(self))])
        return Example(image=batch.images[0], label=int(batch.labels[0]), caption=batch.captions[0])

    def batch(self, indices: list[int]) -> Batch:
        """The examples at ``indices``, collated from the cache (rendering what is missing)."""
        idx = self._cache.indices(indices)
        images = self._cache.get(idx, self._make)
        captions = tuple(self._captions[i] for i in idx.tolist())
        return Batch(images=images, labels=self._labels[idx], captions=captions)
