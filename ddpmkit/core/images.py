"""Image helpers: ``[-1, 1]`` tensors to 8-bit pixels, grids, PNG files, and loading images.

Images are float tensors scaled to ``[-1, 1]``; 8-bit pixel ``p`` maps to ``p / 127.5 - 1`` and
back with :func:`to_uint8`, so loading a PNG and converting it back gives the same pixels.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ddpmkit.core.errors import DataError

_MODES = {1: "L", 3: "RGB"}


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Map ``[-1, 1]`` floats (any shape, e.g. ``(B, C, H, W)``) to ``uint8`` ``0..255``.

    Values outside ``[-1, 1]`` are clamped; the result is rounded to the nearest level.
    """
    scaled = (images.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5
    return scaled.round().to(torch.uint8)


def make_grid(
    images: torch.Tensor, nrow: int | None = None, padding: int = 1, pad_value: int = 128
) -> torch.Tensor:
    """Tile ``(B, C, H, W)`` images in ``[-1, 1]`` into one ``(C, H', W')`` ``uint8`` image.

    ``nrow`` is the number of images per row (default ``ceil(sqrt(B))``); ``padding`` pixels of
    ``pad_value`` separate the images and surround the grid.
    """
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"make_grid expects a non-empty (B, C, H, W) tensor, got {images.shape}")
    b, c, h, w = images.shape
    cols = nrow if nrow is not None else math.ceil(math.sqrt(b))
    if cols < 1 or padding < 0:
        raise ValueError(f"make_grid: nrow must be >= 1 and padding >= 0 (got {cols}, {padding})")
    rows = math.ceil(b / cols)
    pixels = to_uint8(images.cpu())
    grid = torch.full(
        (c, rows * (h + padding) + padding, cols * (w + padding) + padding),
        pad_value,
        dtype=torch.uint8,
    )
    for k in range(b):
        top = padding + (k // cols) * (h + padding)
        left = padding + (k % cols) * (w + padding)
        grid[:, top : top + h, left : left + w] = pixels[k]
    return grid


def save_grid(
    images: torch.Tensor,
    path: str | os.PathLike[str],
    nrow: int | None = None,
    scale: int = 1,
    padding: int = 1,
) -> Path:
    """Write ``(B, C, H, W)`` images (C = 1 or 3) as one PNG grid and return its path.

    ``scale`` enlarges the grid by an integer factor with nearest-neighbour upsampling, so tiny
    images stay crisp. The file is written to a temporary file beside ``path`` and moved into
    place, so a reader never sees a half-written PNG.
    """
    if images.ndim != 4 or images.shape[1] not in _MODES:
        raise ValueError(f"save_grid expects (B, 1 or 3, H, W) images, got {tuple(images.shape)}")
    if scale < 1:
        raise ValueError(f"save_grid: scale must be >= 1, got {scale}")
    grid = make_grid(images, nrow=nrow, padding=padding)
    if scale > 1:
        grid = grid.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
    array = grid.permute(1, 2, 0).numpy()
    picture = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            picture.save(handle, format="PNG")
        os.chmod(tmp, 0o644)  # mkstemp makes the file private; a saved image is not
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _read(path: Path, mode: str) -> Image.Image:
    """Open and fully decode ``path`` in ``mode``; any failure is a :class:`DataError`."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("RGBA", "LA", "PA", "P") or "transparency" in img.info:
                img = img.convert("RGBA")  # drop alpha below without palette warnings
            elif img.mode.startswith("I"):  # 16/32-bit grey: rescale to 8 bits
                img = Image.fromarray(
                    (np.asarray(img, dtype=np.float64) / 257.0)
                    .clip(0, 255)
                    .round()
                    .astype(np.uint8)
                )
            return img.convert(mode)
    except Exception as exc:
        raise DataError(f"cannot read image file {path}: {type(exc).__name__}: {exc}") from exc


def load_image(path: str | os.PathLike[str], channels: int, size: int) -> torch.Tensor:
    """Load an image file as a ``(channels, size, size)`` float tensor in ``[-1, 1]``.

    The image is converted to grey (``channels=1``) or RGB (``channels=3``); a non-square image
    is centre-cropped to a square; a different size is resized (area averaging to shrink,
    bicubic to enlarge). An unreadable or truncated file raises :class:`DataError` naming it.
    """
    if channels not in _MODES:
        raise ValueError(f"load_image: channels must be 1 or 3, got {channels}")
    img = _read(Path(path), _MODES[channels])
    w, h = img.size
    if w != h:
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
    if img.size != (size, size):
        shrink = img.size[0] > size
        method = Image.Resampling.BOX if shrink else Image.Resampling.BICUBIC
        img = img.resize((size, size), method)
    array = np.asarray(img, dtype=np.uint8).reshape(size, size, channels)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 127.5 - 1.0


def save_scatter(
    points: torch.Tensor,
    path: str | os.PathLike[str],
    reference: torch.Tensor | None = None,
    size: int = 512,
) -> Path:
    """Draw ``points`` ``(N, D)`` as a ``size`` x ``size`` PNG scatter plot; return its path.

    The first two coordinates are plotted (x to the right, y up) in blue over the optional
    ``reference`` points ``(M, D)`` in light grey; both axes use one scale, fitted to both sets,
    with grey lines at x = 0 and y = 0. Non-finite points are skipped. The file is written
    atomically by :func:`save_grid`, the image passing through ``[-1, 1]`` exactly.
    """
    from PIL import ImageDraw  # only the scatter plot draws

    sets = [points] if reference is None else [reference, points]
    if any(s.ndim != 2 or s.shape[1] < 2 for s in sets) or size < 16:
        raise ValueError(
            f"save_scatter expects (N, D >= 2) point sets and size >= 16, got "
            f"{[tuple(s.shape) for s in sets]} and size {size}"
        )
    xy = [s.detach()[:, :2].double().cpu() for s in sets]
    xy = [s[torch.isfinite(s).all(dim=1)] for s in xy]
    both = torch.cat(xy)
    lo, hi = (both.amin(0), both.amax(0)) if len(both) else (torch.zeros(2), torch.zeros(2))
    centre = (lo + hi).double() / 2
    half = max(float((hi - lo).max()) / 2, 1e-6) * 1.05  # one scale for both axes, 5% margin
    radius = max(1, size // 256)
    inner = size - 1 - 2 * radius

    def to_pixels(p: torch.Tensor) -> torch.Tensor:
        unit = (p - centre + half) / (2 * half)  # [0, 1]^2, y still pointing up
        return torch.stack([unit[:, 0], 1 - unit[:, 1]], dim=1) * inner + radius

    picture = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(picture)
    zero = to_pixels(torch.zeros(1, 2, dtype=torch.float64))[0].tolist()
    if 0 <= zero[0] < size:
        draw.line([(zero[0], 0), (zero[0], size)], fill=(225, 225, 225))
    if 0 <= zero[1] < size:
        draw.line([(0, zero[1]), (size, zero[1])], fill=(225, 225, 225))
    colours = [(31, 119, 180)] if reference is None else [(190, 190, 190), (31, 119, 180)]
    for s, colour in zip(xy, colours, strict=True):
        for u, v in to_pixels(s).tolist():
            draw.ellipse((u - radius, v - radius, u + radius, v + radius), fill=colour)
    image = torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1).float() / 127.5 - 1.0
    return save_grid(image[None], path, nrow=1, padding=0)
