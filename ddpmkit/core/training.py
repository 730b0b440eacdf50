"""The supporting kinds of training: reverse variances, training objectives and their
random draws, loss weightings, and stages with their context."""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import attrs
import torch
from torch import nn

from ddpmkit.core.component import Component, _ParamsModel
from ddpmkit.core.data import Dataset
from ddpmkit.core.errors import ConfigError, DdpmkitError
from ddpmkit.core.values import Batch, Conditioning
from ddpmkit.core.wiring import CheckContext, RunPipeline, no_pipeline_runner

if TYPE_CHECKING:  # pragma: no cover - import cycle only for type checkers
    from ddpmkit.core.model import DiffusionModel


# ---------------------------------------------------------------------------------------------
# Supporting kinds of the training objective
# ---------------------------------------------------------------------------------------------


class ReverseVariance(Component, nn.Module, abc.ABC):
    """sigma^2 of the reverse step p_theta(x_s | x_t) = N(mu_theta(x_t, t), sigma^2 I) (kind
    ``variance``).

    A step goes from training index ``t`` to ``s`` < ``t`` (``s = t - 1`` on the full chain,
    ``s = -1`` lands on x_0). ``extra`` holds the network's output channels beyond the data's
    (``None`` when it has none); a variance with ``output_multiplier = 2`` makes the pipeline
    build the denoiser with twice the data's channels and reads its second half. What a
    variance estimates after training (Analytic-DPM's table) is fitted by :meth:`fit` when a
    run samples or evaluates; it is not part of the trained checkpoint.
    """

    output_multiplier: ClassVar[int] = 1
    fixed: ClassVar[Literal["beta", "beta_tilde"] | None] = None
    """For a fixed variance, which one: sigma^2 = beta_{t|s} or beta~_{t|s} (else ``None``)."""

    def __init__(self, params: _ParamsModel | None = None) -> None:
        nn.Module.__init__(self)
        self._set_params(params)

    def fit(self, model: DiffusionModel, data: Iterable[torch.Tensor]) -> None:
        """Estimate what the variance needs from data batches, after training (a variance
        without such a need does nothing)."""

    def check(self, context: CheckContext) -> None:
        """A learned variance (``output_multiplier`` > 1) is trained by the VLB term alone:
        training needs ``train.vlb_weight`` > 0."""
        if self.output_multiplier > 1 and context.training and context.vlb_weight == 0:
            raise ConfigError(
                f"variance {context.name!r} is learned from the VLB term: set "
                "train.vlb_weight > 0 (0.001 in Nichol & Dhariwal)"
            )

    @abc.abstractmethod
    def log_variance(
        self,
        model: DiffusionModel,
        t: torch.Tensor,
        s: torch.Tensor,
        extra: torch.Tensor | None,
        x_t: torch.Tensor,
    ) -> torch.Tensor:
        """log sigma^2 for the steps ``t -> s`` (each ``(B,)``), broadcastable to ``x_t``."""


Draws = dict[str, torch.Tensor]
"""A training objective's random numbers for a batch, by name, each ``(B, ...)``: one row per
example, so that a process training on a shard of the batch keeps its rows."""


@attrs.frozen
class Generators:
    """Where a training objective draws from: ``indices`` for integers and uniforms (timesteps,
    offsets; a CPU generator), ``noise`` for Gaussian noise, drawn on the generator's own device
    (the trainer's is on the GPU when it trains there). ``None`` is torch's global generator."""

    indices: torch.Generator | None = None
    noise: torch.Generator | None = None


class TrainingObjective(Component, abc.ABC):
    """What a :class:`~ddpmkit.DiffusionModel` trains on (kind ``objective``): the diffusion
    losses of :mod:`ddpmkit.objectives`, or a ``[train.objective]`` such as adversarial
    training (Xiao et al. 2022, the bundled ``ddgan``).

    Every step the trainer calls :meth:`draw` for the whole (global) batch, from generators
    every process shares, keeps the rows of its own shard, and calls :meth:`loss` on that shard
    inside the module ``DistributedDataParallel`` wraps; it back-propagates the result into the
    model's parameters, which it alone steps (with its optimizer, clipping and EMA). An
    objective with networks of its own (a discriminator) builds them in :meth:`setup`, steps
    them inside :meth:`loss` and saves them through :meth:`state_dict`.
    """

    autocast: ClassVar[bool] = True
    """Whether :meth:`loss` may run under ``train.precision``'s bf16 / fp16 autocast."""

    def check(self, context: CheckContext) -> None:
        """An objective named by ``[train.objective]`` replaces the diffusion loss: a loss
        weighting and the VLB term (``train.vlb_weight``) are refused."""
        for key, used in (
            ("weighting", context.weighting is not None),
            ("vlb_weight", context.vlb_weight > 0),
        ):
            if used:
                raise ConfigError(
                    f"train.{key}: {context.key} {context.name!r} replaces the diffusion "
                    "loss; remove this key"
                )

    def check_distributed(self) -> None:
        """Raise :class:`~ddpmkit.ConfigError` if this objective cannot train with each process
        computing :meth:`loss` on its shard of the batch (default: it can)."""

    def setup(self, model: DiffusionModel, data_shape: tuple[int, ...]) -> None:
        """Build what the objective owns for ``model`` and examples of ``data_shape``, on the
        model's device (called once by the trainer, before any checkpoint is loaded)."""

    @abc.abstractmethod
    def draw(
        self,
        model: DiffusionModel,
        batch_size: int,
        example_shape: tuple[int, ...],
        generators: Generators,
    ) -> Draws:
        """The random numbers of one step for ``batch_size`` examples of ``example_shape``."""

    @abc.abstractmethod
    def loss(
        self, model: DiffusionModel, x0: torch.Tensor, cond: Conditioning | None, draws: Draws
    ) -> torch.Tensor:
        """The scalar loss of a batch ``x0`` (with its conditions) for the model's parameters
        to descend, at ``draws`` (:meth:`draw`'s rows of these examples, on ``x0``'s device)."""

    def batch_loss(
        self,
        model: DiffusionModel,
        x0: torch.Tensor,
        cond: Conditioning | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """:meth:`loss` of ``x0`` at fresh draws from ``generator``: one call for a training
        loop of one's own."""
        draws = self.draw(model, x0.shape[0], tuple(x0.shape[1:]), Generators(generator, generator))
        return self.loss(model, x0, cond, {k: v.to(x0.device) for k, v in draws.items()})

    def metrics(self) -> dict[str, float]:
        """Extra numbers for the training log after the last :meth:`loss` (default: none)."""
        return {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Everything needed to continue training, as named tensors (default: nothing)."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state_dict` from a checkpoint."""


StageLoss = Callable[[Batch, torch.Generator], tuple[torch.Tensor, dict[str, float]]]
"""``(batch, generator) -> (scalar loss, numbers to log)``: one training step's loss of a
network that a stage trains."""


class FitNetwork(Protocol):
    """The type of :attr:`StageContext.fit`."""

    def __call__(
        self,
        network: nn.Module,
        loss_fn: StageLoss,
        *,
        steps: int,
        batch_size: int,
        lr: float,
        log_every: int = 50,
        metadata: Mapping[str, object] | None = None,
    ) -> Path:
        """Train ``network`` with AdamW at ``lr`` on ``loss_fn`` for ``steps`` steps over
        shuffled batches of the stage's data, in the trainer's loop (a progress bar with step,
        loss, it/s and ETA; every ``log_every`` steps the means of the loss and of the logged
        numbers appended to the stage's ``metrics.jsonl``), then save it, with ``metadata``,
        to ``model.safetensors`` in the stage's folder and return that path. The data order
        and ``loss_fn``'s generator follow the stage's seed: one seed, one network."""
        ...


def no_fit(network: nn.Module, loss_fn: StageLoss, **options: Any) -> Path:
    """The ``fit`` of a :class:`StageContext` made without the application."""
    raise DdpmkitError(
        "this StageContext has no application to train a network with (run the stage in a "
        "pipeline, or pass fit)"
    )


@attrs.frozen
class StageContext:
    """What a :class:`Stage` runs with.

    ``directory`` is the stage's own output folder, ``<run>/stages/<name>/``, created empty;
    ``model`` is the pipeline's diffusion model before its ``[train]`` (its schedule and
    forward process are what a noise-aware network trains on); ``dataset`` is the training
    data; all randomness comes from ``seed``; ``progress`` asks for a progress bar; ``fit``
    trains a network of the stage's own through the application's training loop.

    ``run_pipeline(data)`` is the application's service that runs a whole pipeline inside
    the stage: ``data`` holds a pipeline file's tables (``data``, ``denoiser``, ``train``,
    ``sample``...; the seed and device are this context's unless it names them), which the
    application validates, builds and checks, then trains and samples in ``directory``
    (``config.json``, ``checkpoints/``, ``metrics.jsonl``, ``samples.png``); it returns a
    :class:`PipelineRun`.
    """

    name: str
    directory: Path
    model: DiffusionModel
    dataset: Dataset
    device: torch.device
    seed: int
    progress: bool = True
    fit: FitNetwork = attrs.field(default=no_fit, kw_only=True)
    run_pipeline: RunPipeline = attrs.field(default=no_pipeline_runner, kw_only=True)


class Stage(Component, abc.ABC):
    """A step a pipeline runs before its ``[train]`` (kind ``stage``; ``[stages.<name>]``).

    A stage makes something another component uses: a noise-aware classifier for classifier
    guidance, a noised CLIP model, the base model of a cascade. :meth:`run` writes its outputs
    into ``context.directory``; the pipeline marks the stage done when it returns, so a resumed
    run does not redo it, and passes the folder to the components that name the stage (see
    :attr:`Component.stage_params` and :meth:`Component.attach`).
    """

    @abc.abstractmethod
    def run(self, context: StageContext) -> None:
        """Do the stage's work and write its outputs into ``context.directory``."""


class LossWeighting(Component, abc.ABC):
    """Which timesteps training sees and how much each counts (kind ``weighting``).

    :meth:`weights` gives w_t in eps space: the loss of an example is w_t ||eps_hat - eps||^2
    averaged over dimensions, whatever the parameterization (the objective converts).
    :meth:`sample_t` draws the training indices with a correction factor for non-uniform
    draws, and :meth:`observe` receives each example's loss afterwards (for weightings that
    learn from history).
    """

    observes: ClassVar[bool] = False
    """Whether :meth:`observe` learns from the losses (else the objective skips the call)."""

    def weights(self, t: torch.Tensor, model: DiffusionModel) -> torch.Tensor:
        """w_t for the indices ``t`` ``(B,)``; the default is 1 (L_simple)."""
        return torch.ones_like(t, dtype=torch.float32)

    def sample_t(
        self, batch: int, model: DiffusionModel, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(t, correction)``: indices ``(B,)`` and factors ``(B,)`` that keep the loss unbiased
        (1 / (T p_t)); the default is uniform with factor 1 (Ho et al. Algorithm 1, line 3)."""
        t = torch.randint(0, model.T, (batch,), generator=generator)
        return t, torch.ones(batch)

    def observe(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Per-example losses (detached) of the indices ``t``; the default ignores them."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """What :meth:`observe` has learned, for checkpoints (the default has nothing)."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state_dict` from a checkpoint."""
