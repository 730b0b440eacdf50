"""What a pipeline tells a component: when it builds one (:class:`BuildContext`, which
:meth:`Component.wire <ddpmkit.Component.wire>` reads) and when it checks the built ones
(:class:`CheckContext`, which :meth:`Component.check <ddpmkit.Component.check>` reads).

A component states what it needs from the rest of the pipeline in code, on its own class:
``wire`` turns the context into values of its own params (a denoiser's ``in_channels`` is the
data's channels), ``check`` refuses a pipeline it cannot work in. The pipeline fills nothing in
by a param's name and knows no component's rules.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs
import torch

from ddpmkit.core.errors import DdpmkitError

if TYPE_CHECKING:  # pragma: no cover - import cycle only for type checkers
    from ddpmkit.core.data import Dataset
    from ddpmkit.core.interfaces import Conditioner, NoiseSchedule
    from ddpmkit.core.model import DiffusionModel
    from ddpmkit.core.training import LossWeighting, ReverseVariance, TrainingObjective


@attrs.frozen(kw_only=True)
class BuildContext:
    """What the pipeline knows when it builds a component, for :meth:`Component.wire`.

    Components are built in dependency order: the data set, the schedule, the
    parameterization, the reverse variance, the conditioner, the denoiser, then the stages,
    the training and sampling components. Each field is known once the component it comes
    from is built (a data set is built with an empty context):

    * from the training data: ``example_shape`` (``(C, H, W)``, or ``(D,)`` for vectors),
      ``channels``, ``image_size`` (0 for vectors), ``num_classes`` (0: unlabelled) and the
      caption vocabulary, read on demand by :meth:`caption_vocabulary`; ``None`` before;
    * from the schedule: ``timesteps``, its T (``None`` before);
    * from the reverse variance: ``output_multiplier``, the denoiser's output channels per data
      channel (1 without a variance);
    * from the conditioner: ``embedding_dim``, ``extra_channels`` and ``context_dim``, the
      widths of what it produces (0: not produced, or no conditioner).
    """

    example_shape: tuple[int, ...] | None = None
    channels: int | None = None
    image_size: int | None = None
    num_classes: int | None = None
    timesteps: int | None = None
    output_multiplier: int = 1
    embedding_dim: int = 0
    extra_channels: int = 0
    context_dim: int = 0
    read_vocabulary: Callable[[], list[str]] | None = attrs.field(
        default=None, eq=False, repr=False
    )
    """Reads the training data's caption vocabulary (``None`` before the data is built)."""

    def caption_vocabulary(self) -> list[str] | None:
        """The sorted distinct words of the training data's captions
        (:meth:`Dataset.caption_vocabulary <ddpmkit.Dataset.caption_vocabulary>`), read now:
        only a component that takes a vocabulary should ask. ``None`` before the data."""
        return self.read_vocabulary() if self.read_vocabulary is not None else None

    @property
    def output_channels(self) -> int | None:
        """The denoiser's output channels: the data's channels times the variance's
        ``output_multiplier`` (``None`` before the data)."""
        return None if self.channels is None else self.channels * self.output_multiplier

    def denoiser_channels(self) -> dict[str, int]:
        """``{"in_channels": ..., "out_channels": ...}`` for a denoiser of this pipeline's data
        (the data's channels in, :attr:`output_channels` out); empty before the data."""
        if self.channels is None or self.output_channels is None:
            return {}
        return {"in_channels": self.channels, "out_channels": self.output_channels}

    def with_data(self, dataset: Dataset) -> BuildContext:
        """This context with what the training data set ``dataset`` tells."""
        return attrs.evolve(
            self,
            example_shape=tuple(dataset.shape),
            channels=dataset.channels,
            image_size=dataset.image_size,
            num_classes=dataset.num_classes,
            read_vocabulary=functools.cache(dataset.caption_vocabulary),
        )

    def with_schedule(self, schedule: NoiseSchedule) -> BuildContext:
        """This context with the schedule's T."""
        return attrs.evolve(self, timesteps=schedule.T)

    def with_variance(self, variance: ReverseVariance) -> BuildContext:
        """This context with the reverse variance's output multiplier."""
        return attrs.evolve(self, output_multiplier=variance.output_multiplier)

    def with_conditioner(self, conditioner: Conditioner) -> BuildContext:
        """This context with the widths of what the conditioner produces."""
        return attrs.evolve(
            self,
            embedding_dim=conditioner.embedding_dim,
            extra_channels=conditioner.extra_channels,
            context_dim=conditioner.context_dim,
        )


NestedCheck = Callable[[Mapping[str, Any], str], None]
"""``(pipeline mapping, key) -> None``: validate, build and check a nested pipeline."""


def _no_nested_check(data: Mapping[str, Any], key: str) -> None:
    raise DdpmkitError(
        f"{key or 'check'}: this CheckContext has no application to check a nested pipeline "
        "with (check the component in a pipeline, or pass check_pipeline)"
    )


@attrs.frozen(kw_only=True)
class CheckContext:
    """What a component's :meth:`~ddpmkit.Component.check` sees of the built pipeline.

    ``model`` is the pipeline's :class:`~ddpmkit.DiffusionModel` (its schedule, denoiser,
    parameterization, conditioner and variance); ``dataset`` the training data (``None``
    outside a pipeline: a rule about the data then has nothing to check). ``key`` is the key
    path of the component being checked (``sample.guidance``, ``stages.base``) and ``names``
    the registered name of every component by key path (``{"data": "shapes", ...}``), for
    messages. ``training`` says whether the pipeline has a ``[train]`` section, with its
    ``vlb_weight``, its ``[train.weighting]`` and ``[train.objective]`` components;
    ``sampling`` whether it has a ``[sample]`` section. ``check_pipeline(data, key)`` is the
    application's service that validates ``data`` as a pipeline file's tables, builds that
    pipeline and checks it, its errors naming keys under ``key`` (a stage that runs a whole
    pipeline, the cascade's base model, checks it so).

    The pipeline prefixes the component's key to the message of a ConfigError a check
    raises (``sample.sampler: ...``), unless the message already starts with a key path: the
    component's own (``denoiser.in_channels = 1 but ...``) or another section's, for a rule
    that names another key (``train.vlb_weight: ...``).
    """

    model: DiffusionModel
    dataset: Dataset | None = None
    key: str = ""
    names: Mapping[str, str] = attrs.field(factory=dict)
    training: bool = False
    vlb_weight: float = 0.0
    weighting: LossWeighting | None = None
    objective: TrainingObjective | None = None
    sampling: bool = False
    check_pipeline: NestedCheck = _no_nested_check

    @property
    def name(self) -> str:
        """The registered name of the component being checked (``""`` when not known)."""
        return self.names.get(self.key, "")

    @property
    def device(self) -> torch.device:
        """The device the model is on."""
        return self.model.alphas_cumprod.device


@attrs.frozen
class PipelineRun:
    """What :attr:`StageContext.run_pipeline <ddpmkit.StageContext.run_pipeline>` gives back:
    the trained ``model`` (its EMA weights when the pipeline's ``sample.use_ema``) and the
    ``samples`` its ``[sample]`` section drew, on the CPU (``None`` without one)."""

    model: DiffusionModel
    samples: torch.Tensor | None = None


RunPipeline = Callable[[Mapping[str, Any]], PipelineRun]
"""``(pipeline mapping) -> PipelineRun``: run a nested pipeline in a stage's folder."""


def no_pipeline_runner(data: Mapping[str, Any]) -> PipelineRun:
    """The ``run_pipeline`` of a :class:`~ddpmkit.StageContext` made without the application."""
    raise DdpmkitError(
        "this StageContext has no application to run a pipeline with (run the stage in a "
        "pipeline, or pass run_pipeline)"
    )
