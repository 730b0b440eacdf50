"""Bundled samplers: ``ddpm`` (Ho et al. 2020, Algorithm 2) and ``ddim`` (Song et al. 2021)."""

from ddpmkit_samplers.chain import ChainSampler, ChainSamplerParams
from ddpmkit_samplers.ddim import DDIMSampler
from ddpmkit_samplers.ddpm import DDPMSampler

__all__ = ["ChainSampler", "ChainSamplerParams", "DDIMSampler", "DDPMSampler"]
