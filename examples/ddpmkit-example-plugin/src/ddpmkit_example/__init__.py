"""An example ddpmkit plugin: the ``shifted-cosine`` schedule (Hoogeboom et al. 2023) and the
``mean-intensity`` guidance (universal guidance, Bansal et al. 2023)."""

from __future__ import annotations

from ddpmkit_example.guidance import MeanIntensityGuidance, MeanIntensityGuidanceParams
from ddpmkit_example.schedule import ShiftedCosineSchedule, ShiftedCosineScheduleParams

DDPMKIT_PLUGIN_API = "2.0"
"""The ddpmkit plugin API this plugin is written for (a different major is refused)."""

__all__ = [
    "MeanIntensityGuidance",
    "MeanIntensityGuidanceParams",
    "ShiftedCosineSchedule",
    "ShiftedCosineScheduleParams",
]
