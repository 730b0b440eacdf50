"""Built-in data sets: ``shapes`` (procedural, captioned) and ``image-folder`` (files on disk)."""

from __future__ import annotations

from ddpmkit_datasets.image_folder import ImageFolderDataset, ImageFolderParams
from ddpmkit_datasets.shapes import ShapesDataset, ShapesParams

__all__ = ["ImageFolderDataset", "ImageFolderParams", "ShapesDataset", "ShapesParams"]
