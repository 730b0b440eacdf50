"""Bundled conditioning and guidance: the ``class`` and ``text`` conditioners,
``classifier-free`` guidance (Ho & Salimans 2021) and training-free ``inpaint``-ing (RePaint,
Lugmayr et al. 2022)."""

from ddpmkit_conditioning.cfg import ClassifierFreeGuidance
from ddpmkit_conditioning.inpaint import InpaintSampler, region_mask
from ddpmkit_conditioning.labels import ClassConditioner
from ddpmkit_conditioning.text import TextConditioner

DDPMKIT_PLUGIN_API = "1.0"

__all__ = [
    "ClassConditioner",
    "ClassifierFreeGuidance",
    "InpaintSampler",
    "TextConditioner",
    "region_mask",
]
