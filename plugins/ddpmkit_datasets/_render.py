"""Drawing one anti-aliased coloured shape on a dark background with numpy."""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

ShapeName = Literal["circle", "square", "triangle", "diamond", "cross"]
ColorName = Literal["red", "green", "blue", "yellow", "magenta", "cyan"]

SHAPES: tuple[ShapeName, ...] = get_args(ShapeName)
"""Every shape name, in the default label order."""

COLORS: dict[ColorName, tuple[int, int, int]] = {
    "red": (235, 35, 35),
    "green": (35, 205, 55),
    "blue": (50, 95, 255),
    "yellow": (245, 225, 35),
    "magenta": (230, 45, 230),
    "cyan": (35, 220, 230),
}
"""Every colour name and its 8-bit RGB value: saturated and far apart."""

BACKGROUND = (16, 16, 24)
SUPERSAMPLE = 4


def coverage(shape: str, x: np.ndarray, y: np.ndarray, half: float) -> np.ndarray:
    """Boolean mask of ``shape`` of half-size ``half`` at offsets ``(x, y)`` from its centre."""
    ax, ay = np.abs(x), np.abs(y)
    if shape == "circle":
        return np.asarray(x * x + y * y <= half * half)
    if shape == "square":
        return np.asarray(np.maximum(ax, ay) <= 0.9 * half)
    if shape == "triangle":  # pointing up, 2.2 half wide; its centre of mass is near (0, 0)
        width = 1.1 * half * (y + 1.1 * half) / (1.85 * half)
        return np.asarray((y >= -1.1 * half) & (y <= 0.75 * half) & (ax <= width))
    if shape == "diamond":
        return np.asarray(ax + ay <= 1.1 * half)
    if shape == "cross":
        arm = 0.36 * half
        return np.asarray(((ax <= arm) & (ay <= half)) | ((ay <= arm) & (ax <= half)))
    raise ValueError(f"unknown shape {shape!r}; shapes are: {', '.join(SHAPES)}")


def coverage_image(shape: str, cx: float, cy: float, half: float, size: int) -> np.ndarray:
    """Anti-aliased coverage ``(size, size)`` in [0, 1]: the shape drawn at ``SUPERSAMPLE``
    times the resolution and area-averaged down."""
    fine = size * SUPERSAMPLE
    coords = (np.arange(fine, dtype=np.float64) + 0.5) / fine
    inside = coverage(shape, coords[None, :] - cx, coords[:, None] - cy, half)
    return np.asarray(inside.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3)))


def render(
    shape: str, color: ColorName, cx: float, cy: float, half: float, size: int
) -> np.ndarray:
    """``(3, size, size)`` ``uint8`` image; ``cx``, ``cy``, ``half`` are fractions of the side.

    The shape is drawn at ``SUPERSAMPLE`` times the resolution and area-averaged down, which
    anti-aliases its edges.
    """
    alpha = coverage_image(shape, cx, cy, half, size)
    back = np.asarray(BACKGROUND, dtype=np.float64)[:, None, None]
    front = np.asarray(COLORS[color], dtype=np.float64)[:, None, None]
    pixels = back + alpha[None] * (front - back)
    return np.asarray(pixels.round().astype(np.uint8))
