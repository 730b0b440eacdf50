"""A lazily filled in-memory store of ``uint8`` images shared by the data sets."""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import SupportsIndex

import torch


def as_index(index: SupportsIndex, length: int) -> int:
    """``index`` as an int in ``0 .. length-1`` (negative counts from the end) or IndexError."""
    i = operator.index(index)
    if not -length <= i < length:
        raise IndexError(f"index {i} is out of range for a data set of {length} examples")
    return i % length


class PixelCache:
    """``count`` images of shape ``(channels, size, size)`` kept as 8-bit pixels.

    Pixel ``p`` stands for ``p / 127.5 - 1``. Memory is reserved up front but an image is only
    made (and its pages touched) the first time it is asked for.
    """

    def __init__(self, count: int, channels: int, size: int) -> None:
        self.pixels = torch.empty((count, channels, size, size), dtype=torch.uint8)
        self.ready = torch.zeros(count, dtype=torch.bool)

    def indices(self, indices: Sequence[SupportsIndex]) -> torch.Tensor:
        """``indices`` checked and made non-negative, as a ``(B,)`` long tensor."""
        count = self.ready.numel()
        return torch.tensor([as_index(i, count) for i in indices], dtype=torch.long)

    def get(self, idx: torch.Tensor, make: Callable[[int], torch.Tensor]) -> torch.Tensor:
        """The images at checked indices ``idx`` as ``(B, C, H, W)`` floats in ``[-1, 1]``.

        ``make(i)`` returns the ``uint8`` pixels of image ``i`` when it is not cached yet.
        """
        for i in idx[~self.ready[idx]].unique().tolist():
            self.pixels[i] = make(i)
            self.ready[i] = True
        return self.pixels[idx].float() / 127.5 - 1.0
