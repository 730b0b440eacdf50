"""Bundled conditioning and guidance: the ``class`` conditioner and ``classifier-free``
guidance (Ho & Salimans 2021)."""

from ddpmkit_conditioning.cfg import ClassifierFreeGuidance
from ddpmkit_conditioning.labels import ClassConditioner

DDPMKIT_PLUGIN_API = "1.0"

__all__ = ["ClassConditioner", "ClassifierFreeGuidance"]
