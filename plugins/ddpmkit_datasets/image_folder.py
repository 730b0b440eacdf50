"""``image-folder``: image files in a folder, optionally in one sub-folder per class."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Literal, SupportsIndex

import torch
from PIL import Image
from pydantic import Field, field_validator

from ddpmkit import Batch, DataError, Dataset, Example, Params, load_image, to_uint8
from ddpmkit_datasets._cache import PixelCache, as_index

log = logging.getLogger(__name__)
_MODES = {1: "L", 3: "RGB"}


class ImageFolderParams(Params):
    """Parameters of :class:`ImageFolderDataset`."""

    path: str = Field(min_length=1, description="Folder holding the images or class folders.")
    image_size: int = Field(32, ge=1, le=4096, description="Side the images are resized to.")
    channels: Literal[1, 3] = Field(3, description="1 loads images as grey, 3 as RGB.")
    extensions: tuple[str, ...] = Field(
        ("png", "jpg", "jpeg"), min_length=1, description="File name endings to load."
    )
    bad_files: Literal["error", "skip"] = Field(
        "error",
        description=(
            "A file that cannot be read: `error` names it and stops (a bad header when the "
            "data set is built, truncated pixel data when it is first used); `skip` decodes "
            "every file when the data set is built and leaves out, and counts, those that fail."
        ),
    )

    @field_validator("extensions")
    @classmethod
    def _normalise(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(e.lower().lstrip(".") for e in value)


def _images(folder: Path, extensions: tuple[str, ...], recursive: bool) -> list[Path]:
    """Image files in ``folder`` (and below it when ``recursive``), sorted, hidden ones skipped."""
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        f
        for f in found
        if f.is_file()
        and not any(part.startswith(".") for part in f.relative_to(folder).parts)
        and f.suffix.lower().lstrip(".") in extensions
    )


class ImageFolderDataset(Dataset):
    """The images in ``path``: either directly in it (unlabelled, ``num_classes = 0``) or in one
    sub-folder per class (labels number the class folders in sorted name order).

    Images are converted to ``channels``, centre-cropped to a square and resized to
    ``image_size``; each file is read on first use and kept in memory. Captions are empty.
    A missing or empty folder, or an unreadable file, raises :class:`ddpmkit.DataError`
    naming it, unless ``bad_files = "skip"``: then unreadable files are left out and counted in
    ``skipped`` and in a logged warning. Files of another mode than ``channels`` asks for (grey
    among RGB, RGBA, palette) are converted, and the count is logged.
    """

    Params = ImageFolderParams
    params: ImageFolderParams

    def __init__(self, params: ImageFolderParams | None = None) -> None:
        super().__init__(params)
        p = self.params
        root = Path(p.path).expanduser()
        if not root.is_dir():
            what = "is not a folder" if root.exists() else "does not exist"
            raise DataError(f"image folder {root} {what}")
        flat = _images(root, p.extensions, recursive=False)
        classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        by_class = [(d.name, _images(d, p.extensions, recursive=True)) for d in classes]
        by_class = [(name, files) for name, files in by_class if files]
        if flat and by_class:
            raise DataError(
                f"image folder {root} mixes images with class folders "
                f"({', '.join(name for name, _ in by_class)}); use one layout or the other"
            )
        self.class_names = [name for name, _ in by_class]
        files = flat or [f for _, files in by_class for f in files]
        labels = [-1] * len(flat) or [k for k, (_, fs) in enumerate(by_class) for _ in fs]
        if not files:
            endings = ", ".join(p.extensions)
            raise DataError(f"image folder {root} holds no image files ({endings})")
        self.skipped: list[tuple[Path, str]] = []
        kept: list[tuple[Path, int, torch.Tensor | None]] = []
        modes: Counter[str] = Counter()
        for path, label in zip(files, labels, strict=True):
            try:
                mode = _mode(path)
                pixels = self._load(path) if p.bad_files == "skip" else None
            except DataError as exc:
                if p.bad_files == "error":
                    raise DataError(f"{exc} (bad_files = 'skip' leaves such files out)") from exc
                cause = exc.__cause__ or exc
                self.skipped.append((path, f"{type(cause).__name__}: {cause}"))
                continue
            kept.append((path, label, pixels))
            modes[mode] += 1
        if not kept:
            raise DataError(
                f"image folder {root}: none of its {len(files)} image files is readable"
            )
        self.files = [path for path, _, _ in kept]
        self.channels = p.channels
        self.image_size = p.image_size
        self.num_classes = len(self.class_names)
        self._labels = torch.tensor([label for _, label, _ in kept], dtype=torch.long)
        self._cache = PixelCache(len(self.files), p.channels, p.image_size)
        for index, (_, _, pixels) in enumerate(kept):
            if pixels is not None:
                self._cache.pixels[index] = pixels
                self._cache.ready[index] = True
        self._report(root, len(files), modes)

    def _report(self, root: Path, total: int, modes: Counter[str]) -> None:
        """Log what was left out and what was converted: nothing changes silently."""
        if self.skipped:
            shown = "; ".join(f"{path.name} ({why})" for path, why in self.skipped[:3])
            more = f"; and {len(self.skipped) - 3} more" if len(self.skipped) > 3 else ""
            log.warning(
                "image folder %s: skipped %d of %d files that cannot be read: %s%s",
                root,
                len(self.skipped),
                total,
                shown,
                more,
            )
        wanted = _MODES[self.channels]
        converted = {mode: n for mode, n in sorted(modes.items()) if mode != wanted}
        if converted:
            counts = ", ".join(f"{n} from {mode}" for mode, n in converted.items())
            log.warning("image folder %s: converted %s to %s", root, counts, wanted)

    def __len__(self) -> int:
        """Number of image files."""
        return len(self.files)

    def _load(self, path: Path) -> torch.Tensor:
        p = self.params
        return to_uint8(load_image(path, p.channels, p.image_size))

    def _make(self, index: int) -> torch.Tensor:
        return self._load(self.files[index])

    def __getitem__(self, index: SupportsIndex) -> Example:
        """The example at ``index``."""
        batch = self.batch([as_index(index, len(self))])
        return Example(image=batch.images[0], label=int(batch.labels[0]))

    def batch(self, indices: list[int]) -> Batch:
        """The examples at ``indices``, collated from the cache (loading what is missing)."""
        idx = self._cache.indices(indices)
        images = self._cache.get(idx, self._make)
        return Batch(images=images, labels=self._labels[idx], captions=("",) * len(idx))


def _mode(path: Path) -> str:
    """The mode of an image file, read from its header only; a :class:`DataError` naming the
    file when it is not an image PIL can open."""
    try:
        with Image.open(path) as img:
            return str(img.mode)
    except Exception as exc:
        raise DataError(f"cannot read image file {path}: {type(exc).__name__}: {exc}") from exc
