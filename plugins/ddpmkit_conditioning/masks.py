"""Random training masks for mask-conditioned inpainting and uncropping (GLIDE, Nichol et al.
2021, section 3.3; Palette, Saharia et al. 2022, section 3)."""

from __future__ import annotations

from typing import Literal

import torch

from ddpmkit_conditioning.inpaint import region_mask

MaskKind = Literal["rectangle", "half", "center", "border"]
"""What a training mask leaves unknown: a random box (GLIDE's erased sections), a random half
(uncropping in one direction), the middle half of each side, or everything outside it
(uncropping in every direction)."""

HALVES = ("left", "right", "top", "bottom")


def draw_masks(
    kinds: tuple[MaskKind, ...] | list[MaskKind],
    batch: int,
    height: int,
    width: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """``(B, 1, H, W)`` known-masks, 1 where a pixel is known and 0 where the model fills in.

    Per example, a kind is drawn uniformly from ``kinds``, then its own parameters: a
    ``rectangle`` has sides uniform in [H/4, 3H/4] (and [W/4, 3W/4]) at a uniform position;
    a ``half`` is one of the four halves, uniformly. All draws come from ``generator`` (on
    the CPU), so one seed gives one set of masks.
    """
    known = torch.ones(batch, 1, height, width)
    for b in range(batch):
        kind = kinds[int(torch.randint(len(kinds), (), generator=generator))]
        if kind == "rectangle":
            # GLIDE: erase a random section; sides in [S/4, 3S/4], anywhere in the image
            h = int(torch.randint(height // 4, 3 * height // 4 + 1, (), generator=generator))
            w = int(torch.randint(width // 4, 3 * width // 4 + 1, (), generator=generator))
            top = int(torch.randint(height - h + 1, (), generator=generator))
            left = int(torch.randint(width - w + 1, (), generator=generator))
            known[b, :, top : top + h, left : left + w] = 0
        elif kind == "half":
            # Palette's uncropping in one direction: one half unknown
            side = HALVES[int(torch.randint(len(HALVES), (), generator=generator))]
            known[b] = region_mask(side, height, width)[0]
        elif kind == "center":
            known[b] = region_mask("center", height, width)[0]
        else:  # border: uncropping in every direction, the middle half known
            known[b] = 1 - region_mask("center", height, width)[0]
    return known
