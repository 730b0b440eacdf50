"""Built-in data sets: ``shapes`` (procedural, captioned, with a reader of generated images) and
``image-folder`` (files on disk)."""

from __future__ import annotations

from ddpmkit_datasets.image_folder import ImageFolderDataset, ImageFolderParams
from ddpmkit_datasets.reader import ShapesAttributeReader
from ddpmkit_datasets.shapes import ShapesDataset, ShapesParams

DDPMKIT_PLUGIN_API = "2.0"
"""The ddpmkit plugin API this plugin is written for."""

__all__ = [
    "ImageFolderDataset",
    "ImageFolderParams",
    "ShapesAttributeReader",
    "ShapesDataset",
    "ShapesParams",
]
