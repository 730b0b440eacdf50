"""Bundled conditioning and guidance: the ``class`` and ``text`` conditioners,
``classifier-free`` guidance (Ho & Salimans 2021), ``classifier`` guidance with its
``train-classifier`` stage (Dhariwal & Nichol 2021), ``clip`` guidance with its ``train-clip``
stage (GLIDE, Nichol et al. 2021) and training-free ``inpaint``-ing (RePaint, Lugmayr et al.
2022). ``hf-text`` and ``hf-clip`` (module ``ddpmkit_conditioning.hf``) need transformers."""

from ddpmkit_conditioning.cfg import ClassifierFreeGuidance
from ddpmkit_conditioning.classifier import ClassifierGuidance, TrainClassifierStage
from ddpmkit_conditioning.classifier_net import ClassifierNet, ClassifierNetParams
from ddpmkit_conditioning.clip import ClipGuidance, TrainClipStage
from ddpmkit_conditioning.inpaint import InpaintSampler, region_mask
from ddpmkit_conditioning.labels import ClassConditioner
from ddpmkit_conditioning.text import TextConditioner

DDPMKIT_PLUGIN_API = "1.0"

__all__ = [
    "ClassConditioner",
    "ClassifierFreeGuidance",
    "ClassifierGuidance",
    "ClassifierNet",
    "ClassifierNetParams",
    "ClipGuidance",
    "InpaintSampler",
    "TextConditioner",
    "TrainClassifierStage",
    "TrainClipStage",
    "region_mask",
]
