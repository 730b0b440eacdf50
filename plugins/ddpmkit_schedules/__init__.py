"""Bundled noise schedules: ``linear`` (Ho et al. 2020) and ``cosine`` (Nichol & Dhariwal 2021)."""

from ddpmkit_schedules.cosine import CosineSchedule
from ddpmkit_schedules.linear import LinearSchedule

__all__ = ["CosineSchedule", "LinearSchedule"]
