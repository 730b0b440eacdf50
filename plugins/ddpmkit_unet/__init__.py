"""The bundled U-Net denoiser plugin of ddpmkit (Ho et al. 2020; Dhariwal & Nichol 2021)."""

from __future__ import annotations

from ddpmkit_unet.attention import AttentionBlock, CrossAttention2d, SelfAttention2d
from ddpmkit_unet.blocks import Downsample, ResBlock, Upsample
from ddpmkit_unet.embeddings import FourierEmbedding, SinusoidalEmbedding, TimeEmbedding
from ddpmkit_unet.unet import UNet, UNetParams

DDPMKIT_PLUGIN_API = "2.0"
"""The ddpmkit plugin API this plugin is written for."""

__all__ = [
    "AttentionBlock",
    "CrossAttention2d",
    "Downsample",
    "FourierEmbedding",
    "ResBlock",
    "SelfAttention2d",
    "SinusoidalEmbedding",
    "TimeEmbedding",
    "UNet",
    "UNetParams",
    "Upsample",
]
