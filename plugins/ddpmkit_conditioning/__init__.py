"""Bundled conditioning and guidance: the ``class`` conditioner, ``classifier-free`` guidance
(Ho & Salimans 2021), ``classifier`` guidance with its ``train-classifier`` stage (Dhariwal &
Nichol 2021) and training-free ``inpaint``-ing (RePaint, Lugmayr et al. 2022)."""

from ddpmkit_conditioning.cfg import ClassifierFreeGuidance
from ddpmkit_conditioning.classifier import ClassifierGuidance, TrainClassifierStage
from ddpmkit_conditioning.classifier_net import ClassifierNet, ClassifierNetParams
from ddpmkit_conditioning.inpaint import InpaintSampler, region_mask
from ddpmkit_conditioning.labels import ClassConditioner

DDPMKIT_PLUGIN_API = "1.0"

__all__ = [
    "ClassConditioner",
    "ClassifierFreeGuidance",
    "ClassifierGuidance",
    "ClassifierNet",
    "ClassifierNetParams",
    "InpaintSampler",
    "TrainClassifierStage",
    "region_mask",
]
