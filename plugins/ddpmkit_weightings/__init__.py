"""Bundled loss weightings: ``simple`` and ``vlb`` (Ho et al. 2020), ``p2`` (Choi et al. 2022),
``min-snr`` (Hang et al. 2023) and ``importance`` sampling of t (Nichol & Dhariwal 2021)."""

from ddpmkit_weightings.importance import ImportanceWeighting
from ddpmkit_weightings.min_snr import MinSNRWeighting
from ddpmkit_weightings.p2 import P2Weighting
from ddpmkit_weightings.simple import SimpleWeighting
from ddpmkit_weightings.vlb import VLBWeighting

DDPMKIT_PLUGIN_API = "2.0"
"""The ddpmkit plugin API this plugin is written for."""

__all__ = [
    "ImportanceWeighting",
    "MinSNRWeighting",
    "P2Weighting",
    "SimpleWeighting",
    "VLBWeighting",
]
