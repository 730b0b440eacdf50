"""Bundled conditioning and guidance: the ``class`` conditioner, ``classifier-free`` guidance
(Ho & Salimans 2021), training-free ``inpaint``-ing (RePaint, Lugmayr et al. 2022), the
``image`` conditioner (mask-conditioned inpainting, GLIDE), and cascades: the ``diffusion``
stage (the base model) and the ``low-res`` conditioner (noise conditioning augmentation,
Ho et al. 2021)."""

from ddpmkit_conditioning.cascade import DiffusionStage
from ddpmkit_conditioning.cfg import ClassifierFreeGuidance
from ddpmkit_conditioning.image import ImageConditioner
from ddpmkit_conditioning.inpaint import InpaintSampler, region_mask
from ddpmkit_conditioning.labels import ClassConditioner
from ddpmkit_conditioning.lowres import LowResConditioner
from ddpmkit_conditioning.masks import draw_masks

DDPMKIT_PLUGIN_API = "1.0"

__all__ = [
    "ClassConditioner",
    "ClassifierFreeGuidance",
    "DiffusionStage",
    "ImageConditioner",
    "InpaintSampler",
    "LowResConditioner",
    "draw_masks",
    "region_mask",
]
