"""Bundled samplers: ``ddpm`` (Ho et al. 2020, Algorithm 2), ``ddim`` (Song et al. 2021) and
``dpm-solver++`` (Lu et al. 2022, DPM-Solver++(2M))."""

from ddpmkit_samplers.chain import ChainSampler, ChainSamplerParams, dynamic_threshold
from ddpmkit_samplers.ddim import DDIMSampler
from ddpmkit_samplers.ddpm import DDPMSampler
from ddpmkit_samplers.dpm_solver import DPMSolverPlusPlusSampler

DDPMKIT_PLUGIN_API = "2.0"
"""The ddpmkit plugin API this plugin is written for."""

__all__ = [
    "ChainSampler",
    "ChainSamplerParams",
    "DDIMSampler",
    "DDPMSampler",
    "DPMSolverPlusPlusSampler",
    "dynamic_threshold",
]
