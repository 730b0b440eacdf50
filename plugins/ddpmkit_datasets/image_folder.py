"""``image-folder``: image files in a folder, optionally in one sub-folder per class."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, SupportsIndex

import torch
from pydantic import Field, field_validator

from ddpmkit import Batch, DataError, Dataset, Example, Params, load_image, to_uint8
from ddpmkit_datasets._cache import PixelCache, as_index


class ImageFolderParams(Params):
    """Parameters of :class:`ImageFolderDataset`."""

    path: str = Field(min_length=1, description="Folder holding the images or class folders.")
    image_size: int = Field(32, ge=1, le=4096, description="Side the images are resized to.")
    channels: Literal[1, 3] = Field(3, description="1 loads images as grey, 3 as RGB.")
    extensions: tuple[str, ...] = Field(
        ("png", "jpg", "jpeg"), min_length=1, description="File name endings to load."
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
    A missing or empty folder, or an unreadable file, raises :class:`ddpmkit.DataError`.
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
        self.files = flat or [f for _, files in by_class for f in files]
        labels = [-1] * len(flat) or [k for k, (_, fs) in enumerate(by_class) for _ in fs]
        if not self.files:
            endings = ", ".join(p.extensions)
            raise DataError(f"image folder {root} holds no image files ({endings})")
        self.channels = p.channels
        self.image_size = p.image_size
        self.num_classes = len(self.class_names)
        self._labels = torch.tensor(labels, dtype=torch.long)
        self._cache = PixelCache(len(self.files), p.channels, p.image_size)

    def __len__(self) -> int:
        """Number of image files."""
        return len(self.files)

    def _make(self, index: int) -> torch.Tensor:
        p = self.params
        return to_uint8(load_image(self.files[index], p.channels, p.image_size))

    def __getitem__(self, index: SupportsIndex) -> Example:
        """The example at ``index``."""
        batch = self.batch([as_index(index, len(self))])
        return Example(image=batch.images[0], label=int(batch.labels[0]))

    def batch(self, indices: list[int]) -> Batch:
        """The examples at ``indices``, collated from the cache (loading what is missing)."""
        idx = self._cache.indices(indices)
        images = self._cache.get(idx, self._make)
        return Batch(images=images, labels=self._labels[idx], captions=("",) * len(idx))
