"""Bundled conditioning and guidance: the ``class`` and ``text`` conditioners,
``classifier-free`` guidance (Ho & Salimans 2021), ``classifier`` guidance with its
``train-classifier`` stage (Dhariwal & Nichol 2021), ``clip`` guidance with its ``train-clip``
stage (GLIDE, Nichol et al. 2021), training-free ``inpaint``-ing (RePaint, Lugmayr et al.
2022), the ``image`` conditioner (mask-conditioned inpainting, GLIDE), and cascades: the
``diffusion`` stage (the base model) and the ``low-res`` conditioner (noise conditioning
augmentation, Ho et al. 2021). ``hf-text`` and ``hf-clip`` (module
``ddpmkit_conditioning.hf``) need transformers."""

from ddpmkit_conditioning.cascade import DiffusionStage
from ddpmkit_conditioning.cfg import ClassifierFreeGuidance
from ddpmkit_conditioning.classifier import ClassifierGuidance, TrainClassifierStage
from ddpmkit_conditioning.classifier_net import ClassifierNet, ClassifierNetParams
from ddpmkit_conditioning.clip import ClipGuidance, TrainClipStage
from ddpmkit_conditioning.image import ImageConditioner
from ddpmkit_conditioning.inpaint import InpaintSampler, region_mask
from ddpmkit_conditioning.labels import ClassConditioner
from ddpmkit_conditioning.lowres import LowResConditioner
from ddpmkit_conditioning.masks import draw_masks
from ddpmkit_conditioning.text import TextConditioner

DDPMKIT_PLUGIN_API = "2.0"

__all__ = [
    "ClassConditioner",
    "ClassifierFreeGuidance",
    "ClassifierGuidance",
    "ClassifierNet",
    "ClassifierNetParams",
    "ClipGuidance",
    "DiffusionStage",
    "ImageConditioner",
    "InpaintSampler",
    "LowResConditioner",
    "TextConditioner",
    "TrainClassifierStage",
    "TrainClipStage",
    "draw_masks",
    "region_mask",
]
