"""Denoising diffusion GANs (Xiao et al. 2022) on ddpmkit's public API: a generator denoiser
with a latent z, a time-conditioned discriminator trained by the ``ddgan`` objective, and the
``ddgan`` sampler for the few-step chain."""

from ddpmkit_ddgan.discriminator import Discriminator
from ddpmkit_ddgan.generator import DDGANGenerator
from ddpmkit_ddgan.objective import DDGANObjective, real_pair
from ddpmkit_ddgan.sampler import DDGANSampler

DDPMKIT_PLUGIN_API = "2.0"
"""The ddpmkit plugin API this plugin is written for."""

__all__ = ["DDGANGenerator", "DDGANObjective", "DDGANSampler", "Discriminator", "real_pair"]
