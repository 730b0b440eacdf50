"""Bundled reverse variances: fixed (Ho et al.), learned (Nichol & Dhariwal), analytic (Bao)."""

from ddpmkit_variances.analytic import AnalyticVariance
from ddpmkit_variances.fixed import FixedLargeVariance, FixedSmallVariance
from ddpmkit_variances.learned import LearnedRangeVariance

DDPMKIT_PLUGIN_API = "2.0"
"""The ddpmkit plugin API this plugin is written for."""

__all__ = [
    "AnalyticVariance",
    "FixedLargeVariance",
    "FixedSmallVariance",
    "LearnedRangeVariance",
]
