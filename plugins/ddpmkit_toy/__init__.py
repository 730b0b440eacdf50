"""Toy 2D / vector diffusion: the exact ``gmm-oracle`` denoiser, an ``mlp`` denoiser and the
``gmm``, ``two-moons``, ``swiss-roll`` and ``checkerboard`` data sets."""

from __future__ import annotations

from ddpmkit_toy.datasets import (
    CheckerboardDataset,
    GMMDataset,
    SwissRollDataset,
    TwoMoonsDataset,
    VectorDataset,
)
from ddpmkit_toy.mixture import GaussianMixture, MixtureParams
from ddpmkit_toy.mlp import MLPDenoiser
from ddpmkit_toy.oracle import GMMOracle

DDPMKIT_PLUGIN_API = "2.0"
"""The ddpmkit plugin API this plugin is written for."""

__all__ = [
    "CheckerboardDataset",
    "GMMDataset",
    "GMMOracle",
    "GaussianMixture",
    "MLPDenoiser",
    "MixtureParams",
    "SwissRollDataset",
    "TwoMoonsDataset",
    "VectorDataset",
]
