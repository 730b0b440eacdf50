"""Reading a ``shapes`` image back: which shape, which colour, where (no learned classifier),
and the ``shapes`` attribute reader that ``[eval] attributes`` uses."""

from __future__ import annotations

import attrs
import numpy as np
import torch

from ddpmkit import AttributeReader, ConfigError, Dataset, Params, caption_words
from ddpmkit_datasets._render import BACKGROUND, COLORS, SHAPES, coverage, coverage_image
from ddpmkit_datasets.shapes import POSITIONS, ShapesDataset

MIN_COVERAGE = 0.02
"""A reading needs at least this fraction of the image in the foreground."""
MAX_RESIDUAL = 0.35
"""... and the best shape template must explain the foreground this well (RMS of coverage)."""


@attrs.frozen
class ShapeReading:
    """What :func:`read_shape` found: names, or ``None`` for an image that shows no shape."""

    shape: str | None
    color: str | None
    position: str | None
    residual: float
    """RMS difference between the observed coverage and the best template (0 = exact)."""

    @property
    def readable(self) -> bool:
        """Whether a shape, a colour and a position were all read."""
        return self.shape is not None


def read_shape(image: torch.Tensor) -> ShapeReading:
    """Read one ``(3, S, S)`` image in ``[-1, 1]`` drawn like the ``shapes`` data.

    1. Colour: each pixel is background + alpha (colour - background); the colour whose line
       through the background fits the bright pixels best (least squares) is the colour.
    2. Coverage: alpha per pixel along that colour's line, clipped to [0, 1].
    3. Shape: each template rendered with the half-size its area implies, its centroid on the
       coverage's; the one closest to the coverage (RMS) wins.
    4. Position: that template's anchor, snapped to the nearest of the five positions.
    """
    pixels = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).numpy().astype(np.float64)
    size = pixels.shape[-1]
    back = np.asarray(BACKGROUND, dtype=np.float64)[:, None, None]
    offset = (pixels - back).reshape(3, -1)
    # 1. the colour whose background-to-colour line fits the pixels best
    fits = {}
    for name, rgb in COLORS.items():
        direction = np.asarray(rgb, dtype=np.float64) - np.asarray(BACKGROUND, dtype=np.float64)
        alpha = np.clip(direction @ offset / (direction @ direction), 0.0, 1.0)
        error = offset - np.outer(direction, alpha)
        weight = alpha > 0.25
        fits[name] = (float((error[:, weight] ** 2).sum()) - 1e4 * float(weight.sum()), alpha)
    color = min(fits, key=lambda n: fits[n][0])
    # 2. coverage along that colour
    alpha = fits[color][1].reshape(size, size)
    area = float(alpha.sum()) / size**2
    if area < MIN_COVERAGE:
        return ShapeReading(None, None, None, float("nan"))
    # 3. the coverage's centroid
    coords = (np.arange(size) + 0.5) / size
    cx = float((alpha.sum(0) * coords).sum() / alpha.sum())
    cy = float((alpha.sum(1) * coords).sum() / alpha.sum())
    # 4. the template that explains the coverage best, placed so its centroid is there
    best, residual, anchor = None, float("inf"), (cx, cy)
    for shape in SHAPES:
        half = float(np.sqrt(area / _AREA_PER_HALF_SQUARED[shape]))
        ox, oy = _CENTROID_OFFSET[shape]
        centre = (cx - ox * half, cy - oy * half)
        template = coverage_image(shape, *centre, half, size)
        rms = float(np.sqrt(((template - alpha) ** 2).mean() / max(area, 1e-9)))
        if rms < residual:
            best, residual, anchor = shape, rms, centre
    # 5. the position: centred shapes move at most JITTER (0.04) from the middle, the others
    # at least 0.11 along their axis, so 0.075 separates them
    dx, dy = anchor[0] - 0.5, anchor[1] - 0.5
    if max(abs(dx), abs(dy)) < 0.075:
        position = "center"
    elif abs(dx) >= abs(dy):
        position = "right" if dx > 0 else "left"
    else:
        position = "bottom" if dy > 0 else "top"
    if residual > MAX_RESIDUAL:
        return ShapeReading(None, color, position, residual)
    return ShapeReading(best, color, position, residual)


def read_shapes(images: torch.Tensor) -> list[ShapeReading]:
    """:func:`read_shape` for each image of a batch ``(B, 3, S, S)``."""
    return [read_shape(image) for image in images]


def _shape_constants() -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """Area / half^2 and centroid offset / half of each shape, measured once on a fine grid."""
    n = 801
    grid = np.linspace(-1.5, 1.5, n)
    x, y = grid[None, :], grid[:, None]
    cell = (grid[1] - grid[0]) ** 2
    areas: dict[str, float] = {}
    offsets: dict[str, tuple[float, float]] = {}
    for shape in SHAPES:
        inside = coverage(shape, x + 0 * y, y + 0 * x, 1.0)
        areas[shape] = float(inside.sum() * cell)
        offsets[shape] = (
            float((x * inside).sum() / inside.sum()),
            float((y * inside).sum() / inside.sum()),
        )
    return areas, offsets


_AREA_PER_HALF_SQUARED, _CENTROID_OFFSET = _shape_constants()


class ShapesAttributeReader(AttributeReader):
    """The ``shapes`` data's reader: shape, colour and position of a generated image, read
    analytically (:func:`read_shape`); a label is a shape, a caption names any of the three.

    Registered as ``attribute-reader`` ``shapes``, the name of the data set it reads.
    """

    def __init__(self, params: Params | None = None) -> None:
        super().__init__(params)
        self._shapes: tuple[str, ...] = SHAPES  # the default data's; bind() sets the data's

    def bind(self, dataset: Dataset) -> None:
        """Record the data's ``shapes``, whose order gives each label its shape."""
        if not isinstance(dataset, ShapesDataset):
            raise ConfigError(
                f"attribute-reader 'shapes' reads the shapes data set, not {type(dataset).__name__}"
            )
        self._shapes = dataset.params.shapes

    def read_attributes(self, images: torch.Tensor) -> list[dict[str, str] | None]:
        """Shape, colour and position of each image, ``None`` where no shape is read."""
        return [
            {"shape": r.shape, "color": r.color, "position": r.position}  # type: ignore[dict-item]
            if r.readable
            else None
            for r in read_shapes(images)
        ]

    def label_attributes(self, label: int) -> dict[str, str]:
        """A label is the index of its shape in the data's ``shapes``."""
        return {"shape": self._shapes[label]}

    def caption_attributes(self, caption: str) -> dict[str, str]:
        """The shape, colour and position a caption names (any it leaves out are not asked
        for): ``"a red circle on the left"`` -> shape circle, colour red, position left."""
        found: dict[str, str] = {}
        said = caption_words(caption)
        for key, names in (("shape", SHAPES), ("color", tuple(COLORS)), ("position", POSITIONS)):
            named = [name for name in names if name in said]
            if len(named) == 1:  # none, or a caption naming two, asks for nothing definite
                found[key] = named[0]
        return found
