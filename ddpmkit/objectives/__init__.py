"""The diffusion losses as training objectives, and the one place that picks a model's.

:class:`SimpleObjective` is L_simple with a loss weighting (Ho et al. 2020),
:class:`HybridObjective` adds lambda L_vlb to train a learned variance (Nichol & Dhariwal 2021),
and :class:`VLBObjective` is the variational bound itself, which trains a learnable schedule
(Kingma et al. 2021). Each is a :class:`~ddpmkit.TrainingObjective`; :func:`diffusion_objective`
chooses among them. Core-level: imports :mod:`ddpmkit.core`, nothing of the application.
"""

from __future__ import annotations

from ddpmkit.core.errors import ConfigError
from ddpmkit.core.model import DiffusionModel
from ddpmkit.core.training import LossWeighting, TrainingObjective
from ddpmkit.objectives.bound import VLBObjective
from ddpmkit.objectives.simple import HybridObjective, HybridParams, SimpleObjective

__all__ = [
    "HybridObjective",
    "HybridParams",
    "SimpleObjective",
    "VLBObjective",
    "diffusion_objective",
]


def diffusion_objective(
    model: DiffusionModel, weighting: LossWeighting | None = None, vlb_weight: float = 0.0
) -> TrainingObjective:
    """The diffusion loss ``model`` trains on: the variational bound for a schedule that
    trains on it (:attr:`~ddpmkit.NoiseSchedule.trains_on_bound`), else L_simple with
    ``weighting``, plus ``vlb_weight`` L_vlb (L_hybrid) when ``vlb_weight`` > 0."""
    if model.schedule.trains_on_bound:
        if weighting is not None or vlb_weight > 0:
            raise ConfigError(
                f"schedule {type(model.schedule).__name__} is learned on the variational bound "
                "itself (Kingma et al. 2021): no loss weighting and no vlb_weight"
            )
        return VLBObjective()
    if vlb_weight > 0:
        return HybridObjective(HybridParams(vlb_weight=vlb_weight), weighting=weighting)
    return SimpleObjective(weighting=weighting)
