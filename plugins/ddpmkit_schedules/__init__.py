"""Bundled noise schedules: ``linear`` (Ho et al. 2020), ``cosine`` (Nichol & Dhariwal 2021),
``sigmoid`` (Jabri et al. 2022), ``scaled-linear`` (Rombach et al. 2022) and ``betas`` (an
explicit list), each with the ``zero_terminal_snr`` rescale of Lin et al. (2024); and
``learned``, the trainable log-SNR network of Kingma et al. (2021)."""

from ddpmkit_schedules.base import RescalableParams, RescalableSchedule, rescale_zero_terminal_snr
from ddpmkit_schedules.betas import BetasSchedule
from ddpmkit_schedules.cosine import CosineSchedule
from ddpmkit_schedules.learned import LearnedSchedule
from ddpmkit_schedules.linear import LinearSchedule
from ddpmkit_schedules.scaled_linear import ScaledLinearSchedule
from ddpmkit_schedules.sigmoid import SigmoidSchedule

DDPMKIT_PLUGIN_API = "2.0"
"""The ddpmkit plugin API this plugin is written for."""

__all__ = [
    "BetasSchedule",
    "CosineSchedule",
    "LearnedSchedule",
    "LinearSchedule",
    "RescalableParams",
    "RescalableSchedule",
    "ScaledLinearSchedule",
    "SigmoidSchedule",
    "rescale_zero_terminal_snr",
]
