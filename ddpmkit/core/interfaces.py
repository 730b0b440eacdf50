"""The six component interfaces of ddpmkit and the small value types they exchange.

Conventions shared by every interface:

* ``t`` is the *training timestep index*, an integer tensor of shape ``(B,)`` with values in
  ``0 .. T-1`` (dtype ``torch.long``). Index ``t`` is step ``t + 1`` of Ho et al., whose steps
  run ``1 .. T``; index ``0`` is the least noisy step.
* Images are ``(B, C, H, W)`` floating tensors scaled to ``[-1, 1]``; 2D toy data is ``(B, D)``.
* Everything a component computes lives on the device and in the dtype of its tensor inputs.
* A component declares its user-facing parameters as a nested pydantic model called ``Params``
  (``extra="forbid"``) and is built as ``Component(Component.Params(...))``, which is what
  :func:`ddpmkit.create` does after validating the keyword arguments it was given.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import attrs
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from ddpmkit.core.errors import ConfigError, DdpmkitError
from ddpmkit.core.wiring import BuildContext, CheckContext, RunPipeline, no_pipeline_runner

if TYPE_CHECKING:  # pragma: no cover - import cycle only for type checkers
    from ddpmkit.core.model import DiffusionModel


class Params(BaseModel):
    """Base class of every component's parameter model: unknown keys and non-finite numbers
    (nan, inf) are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


_ParamsModel = Params


class Component:
    """Mixin giving a component its validated ``params`` and the ``Params`` model it accepts."""

    Params: ClassVar[type[_ParamsModel]] = _ParamsModel
    params: _ParamsModel

    stage_params: ClassVar[tuple[str, ...]] = ()
    """Names of this component's params whose value (when set) names a ``[stages.<name>]``
    table whose output it uses: a pipeline checks each names a stage before anything runs,
    and hands the stages' folders to :meth:`attach` once they ran."""

    def __init__(self, params: _ParamsModel | None = None) -> None:
        self._set_params(params)

    def _set_params(self, params: _ParamsModel | None) -> None:
        self.params = params if params is not None else self.Params()

    def attach(self, stages: Mapping[str, Path]) -> None:
        """Receive the output folder of each of the pipeline's stages, by stage name, after
        they ran and before this component is used (default: nothing to receive). A component
        with :attr:`stage_params` loads what it needs from ``stages[name]`` here."""

    @classmethod
    def wire(cls, context: BuildContext) -> dict[str, Any]:
        """Values of this component's params taken from the rest of the pipeline (default:
        none): a denoiser's ``in_channels`` is the data's channels, a text conditioner's
        ``vocabulary`` the data's caption words.

        A pipeline calls this before it builds the component, with what it knows then (see
        :class:`BuildContext`), and uses a value only where the pipeline file leaves the key
        out; the params are then validated as usual. Return keys of :attr:`Params` only.
        :func:`ddpmkit.create` does not call it: from Python, pass the params.
        """
        return {}

    def check(self, context: CheckContext) -> None:
        """Raise :class:`~ddpmkit.ConfigError` if this component cannot work in the pipeline
        that ``context`` describes (default: it can).

        Called once every component of a pipeline is built, before any work, so that a
        mismatch fails there; the pipeline prefixes this component's key to the message (see
        :class:`CheckContext`). A class that overrides it calls ``super().check(context)``
        where its base class has rules of its own (a denoiser's channels, say).
        """


# ---------------------------------------------------------------------------------------------
# Value types
# ---------------------------------------------------------------------------------------------


@attrs.frozen
class Conditioning:
    """What a :class:`Conditioner` hands a :class:`Denoiser`; every field is optional.

    * ``channels``: ``(B, C_c, H, W)`` extra input channels concatenated to ``x_t``
      (a low-resolution image, a mask...).
    * ``embedding``: ``(B, D_e)`` vector added to the denoiser's time embedding (a class label,
      a pooled text vector, a noise-augmentation level...).
    * ``context``: ``(B, L, D_c)`` token sequence the denoiser attends to with cross-attention,
      with ``context_mask`` ``(B, L)`` (``True`` marks a real token).
    """

    channels: torch.Tensor | None = None
    embedding: torch.Tensor | None = None
    context: torch.Tensor | None = None
    context_mask: torch.Tensor | None = None

    def where(self, mask: torch.Tensor, other: Conditioning) -> Conditioning:
        """Row b from ``other`` where ``mask[b]`` is true, else from this one (condition
        dropout: ``cond.where(drop, null)``)."""
        fields: dict[str, torch.Tensor | None] = {}
        for name in ("channels", "embedding", "context", "context_mask"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine is None or theirs is None:
                if mine is not theirs:
                    raise ValueError(f"Conditioning.where: {name} is set on one side only")
                fields[name] = None
                continue
            row = mask.to(mine.device).reshape(-1, *([1] * (mine.ndim - 1)))
            fields[name] = torch.where(row, theirs.to(mine.device), mine)
        return Conditioning(**fields)

    @staticmethod
    def cat(parts: Sequence[Conditioning]) -> Conditioning:
        """Concatenate conditionings along the batch; a field must be set in all or none."""
        fields: dict[str, torch.Tensor | None] = {}
        for name in ("channels", "embedding", "context", "context_mask"):
            values = [getattr(p, name) for p in parts]
            if all(v is None for v in values):
                fields[name] = None
            elif any(v is None for v in values):
                raise ValueError(f"Conditioning.cat: {name} is set in some parts, not all")
            else:
                fields[name] = torch.cat(values)
        return Conditioning(**fields)


@attrs.frozen
class Prediction:
    """A denoiser's output in every form a sampler needs.

    ``eps`` is the predicted noise, ``x0`` the predicted clean sample, both shaped like ``x_t``;
    ``output`` is the raw network output (its first ``C`` channels are what the
    parameterization converts; later objectives may emit more channels).
    """

    eps: torch.Tensor
    x0: torch.Tensor
    output: torch.Tensor


@attrs.frozen
class SamplerStep:
    """What a sampler passes to its ``callback`` after each step.

    ``index`` counts steps taken (0-based) out of ``total``; ``t`` is the training timestep the
    step started from; ``x`` is the new sample and ``x0`` the prediction of the clean sample.
    """

    index: int
    total: int
    t: int
    x: torch.Tensor
    x0: torch.Tensor


PredictFn = Callable[[torch.Tensor, torch.Tensor, "Conditioning | None"], Prediction]
"""``(x_t, t, cond) -> Prediction``: how samplers and guidance ask for a prediction."""

SamplerCallback = Callable[[SamplerStep], None]

ZERO_TERMINAL_SNR = 2e-10
"""SNR(T) at or below which a schedule counts as zero-terminal-SNR (Lin et al. 2024): the
bundled rescale ends on abar_T <= 1e-10; the cosine schedule's own end is 2.4e-9."""


# ---------------------------------------------------------------------------------------------
# The six interfaces
# ---------------------------------------------------------------------------------------------


class NoiseSchedule(Component, abc.ABC):
    """The forward-process variances: abar_t over ``T`` training steps (Ho et al. 2020, eq. 4).

    A subclass implements :meth:`make_alphas_cumprod`; every other quantity is derived from it
    once, here, in float64 on the CPU. ``alphas_cumprod[t]`` is abar at training index ``t``
    (paper step ``t + 1``); it must be strictly decreasing and lie in ``(0, 1]``.
    """

    def __init__(self, params: Params | None = None) -> None:
        self._set_params(params)
        self._set_alphas_cumprod(self.make_alphas_cumprod())

    def _set_alphas_cumprod(self, abar: torch.Tensor) -> None:
        """Validate abar_t and derive alpha_t and beta_t from it (float64, CPU)."""
        abar = abar.detach().to("cpu", torch.float64)
        name = type(self).__name__
        if abar.ndim != 1 or abar.numel() == 0:
            raise ConfigError(f"schedule {name}: alphas_cumprod must have shape (T,) with T >= 1")
        if not (torch.all(abar > 0) and torch.all(abar <= 1) and torch.all(abar[1:] < abar[:-1])):
            raise ConfigError(f"schedule {name}: alphas_cumprod must decrease strictly in (0, 1]")
        self.alphas_cumprod: torch.Tensor = abar
        abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
        # alpha_t = abar_t / abar_{t-1}; beta_t = 1 - alpha_t (Ho et al. eq. 4 read backwards)
        self.alphas: torch.Tensor = abar / abar_prev
        self.betas: torch.Tensor = 1.0 - self.alphas

    @abc.abstractmethod
    def make_alphas_cumprod(self) -> torch.Tensor:
        """Return abar_t for t = 0..T-1, shape ``(T,)``."""

    @property
    def T(self) -> int:
        """Number of training timesteps."""
        return int(self.alphas_cumprod.numel())

    @property
    def snr(self) -> torch.Tensor:
        """Signal-to-noise ratio abar_t / (1 - abar_t) (Kingma et al. 2021), shape ``(T,)``."""
        return self.alphas_cumprod / (1.0 - self.alphas_cumprod)

    @property
    def log_snr(self) -> torch.Tensor:
        """log SNR(t), shape ``(T,)``."""
        return torch.log(self.snr)

    @property
    def zero_terminal_snr(self) -> bool:
        """Whether SNR(T) is (almost) zero: at most :data:`ZERO_TERMINAL_SNR` (Lin et al. 2024)."""
        return bool(self.snr[-1] <= ZERO_TERMINAL_SNR)

    trains_on_bound: ClassVar[bool] = False
    """Whether the schedule has parameters that train with the model on the variational bound
    (Kingma et al. 2021): a model with such a schedule trains with the bound as its loss."""

    def log_snr_at(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log SNR at training indices ``t`` ``(B,)``, returned twice as ``(ends, shape)``
        (see :meth:`LearnableSchedule.log_snr_at`); a fixed schedule's values, float64 on
        ``t``'s device, depend on no parameter."""
        values = self.log_snr.to(t.device)[t]
        return values, values

    def refresh(self) -> None:
        """Re-derive ``alphas_cumprod`` after the schedule's parameters changed; a fixed
        schedule has none, and its ``alphas_cumprod`` stays the same tensor."""


class LearnableScheduleParams(Params):
    """Parameters every learnable schedule has: the number of training steps."""

    timesteps: int = Field(1000, ge=2, le=100_000, description="Number of training steps T.")


class LearnableSchedule(NoiseSchedule, nn.Module):
    """A schedule with trainable parameters: log-SNR as a network of the time (Kingma et al.
    2021, section 3.2), trained jointly with the denoiser on the variational bound.

    A subclass creates its parameters in :meth:`build` and implements :meth:`log_snr_at`.
    ``alphas_cumprod`` and everything derived from it are a no-grad snapshot of the current
    parameters, taken by :meth:`refresh`; :class:`~ddpmkit.DiffusionModel` re-takes it after
    every optimizer step and on loading weights, so samplers always see the trained schedule.
    """

    Params: ClassVar[type[_ParamsModel]] = LearnableScheduleParams
    params: LearnableScheduleParams
    trains_on_bound: ClassVar[bool] = True

    def __init__(self, params: _ParamsModel | None = None) -> None:
        nn.Module.__init__(self)
        self._set_params(params)
        self.build()
        self.refresh()

    @abc.abstractmethod
    def build(self) -> None:
        """Create the trainable parameters (called once, before the first :meth:`refresh`)."""

    @abc.abstractmethod
    def log_snr_at(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log SNR at training indices ``t`` ``(B,)``, returned twice as ``(ends, shape)``.

        Both hold the same values. ``ends`` is differentiable only in the parameters that set
        the end points log SNR(0) and log SNR(T-1), ``shape`` only in those that shape the
        curve between them. In continuous time the bound depends on the end points alone
        (Kingma et al. 2021, section 5.1), so the model trains ``ends`` on the bound and
        ``shape`` on the variance of its estimate (section 5.3).
        """

    def make_alphas_cumprod(self) -> torch.Tensor:
        """abar_t = sigmoid(log SNR(t)) at every index, without gradient, in float64."""
        device = next(self.parameters()).device
        with torch.no_grad():
            log_snr = self.log_snr_at(torch.arange(self.params.timesteps, device=device))[0]
        return torch.sigmoid(log_snr.to(torch.float64))

    def refresh(self) -> None:
        """Re-derive ``alphas_cumprod`` (and alpha, beta, SNR) from the current parameters."""
        self._set_alphas_cumprod(self.make_alphas_cumprod())

    def check(self, context: CheckContext) -> None:
        """Training refuses a loss weighting and the hybrid loss's VLB term: the schedule is
        trained on the variational bound itself (Kingma et al. 2021)."""
        if not context.training:
            return
        for key, used in (
            ("weighting", context.weighting is not None),
            ("vlb_weight", context.vlb_weight > 0),
        ):
            if used:
                raise ConfigError(
                    f"train.{key}: schedule {context.name!r} is learned on the variational "
                    "bound itself (Kingma et al. 2021); remove this key"
                )


class Parameterization(Component, abc.ABC):
    """What the network predicts: the training target and the conversion of its output.

    Both methods take ``alpha = sqrt(abar_t)`` and ``sigma = sqrt(1 - abar_t)`` already shaped
    to broadcast against ``x_t`` (e.g. ``(B, 1, 1, 1)``), so a parameterization never needs the
    schedule itself.
    """

    @abc.abstractmethod
    def target(
        self, x0: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor
    ) -> torch.Tensor:
        """The regression target for ``x_t = alpha * x0 + sigma * eps``."""

    @abc.abstractmethod
    def to_eps_x0(
        self, output: torch.Tensor, x_t: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Convert a network ``output`` at ``x_t`` to ``(eps, x0)``."""

    @abc.abstractmethod
    def eps_error_factor(self, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """f with ||eps_hat - eps||^2 = f * ||output - target||^2 (loss weights are eps-space)."""


class Denoiser(Component, nn.Module, abc.ABC):
    """The network: ``forward(x_t, t, cond) -> output`` of shape ``(B, out_channels, ...)``.

    ``x_t`` is ``(B, in_channels, H, W)`` *before* any conditioning channels are appended: a
    denoiser that accepts ``cond.channels`` concatenates them itself. ``t`` is the training
    index ``(B,)``. ``cond`` is ``None`` for an unconditional call. A denoiser raises
    ``ValueError`` when given a conditioning field it was not built to consume.
    """

    supports_gradient_checkpointing: ClassVar[bool] = False
    """Whether the network honours :attr:`gradient_checkpointing`."""
    gradient_checkpointing: bool = False
    """Recompute blocks in the backward pass instead of storing their activations (in
    training mode, when the network supports it)."""

    def __init__(self, params: Params | None = None) -> None:
        nn.Module.__init__(self)
        self._set_params(params)

    def bind(self, schedule: NoiseSchedule, parameterization: Parameterization) -> None:
        """Called once by :class:`~ddpmkit.DiffusionModel` with the schedule and the
        parameterization it will be used with. A network that needs the noise levels behind
        ``t`` or the meaning of its output (an exact oracle, a time embedding of log-SNR)
        records them here; the default does nothing."""

    @property
    @abc.abstractmethod
    def in_channels(self) -> int:
        """Channels of ``x_t`` (excluding conditioning channels)."""

    @property
    @abc.abstractmethod
    def out_channels(self) -> int:
        """Channels of the output."""

    @abc.abstractmethod
    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None
    ) -> torch.Tensor:
        """Run the network."""

    def check(self, context: CheckContext) -> None:
        """The network fits the data and the conditioner: ``in_channels`` is the data's
        channels, ``out_channels`` those times the variance's ``output_multiplier``, and one
        tiny forward pass runs on the conditioner's encoding of a training example and on a
        data-shaped input with the null condition (so every shape mismatch the network knows
        of fails here). Nothing to check without a data set."""
        data = context.dataset
        if data is None:
            return
        if self.in_channels != data.channels:
            raise ConfigError(
                f"denoiser.in_channels = {self.in_channels} but data "
                f"{context.names.get('data', '')!r} has {data.channels} channels"
            )
        model, device = context.model, context.device
        conditioner = model.conditioner
        if conditioner is not None:
            try:
                with torch.no_grad():
                    raw = conditioner.raw_from_batch(data.batch([0]))
                    self(
                        torch.zeros(1, *data.shape, device=device),
                        torch.zeros(1, dtype=torch.long, device=device),
                        model.encode(raw),
                    )
            except (ValueError, RuntimeError) as exc:
                raise ConfigError(
                    f"denoiser {context.name!r} cannot take what conditioner "
                    f"{context.names.get('conditioner', '')!r} produces: {exc}"
                ) from exc
        self._check_output(context, data)

    def _check_output(self, context: CheckContext, data: Dataset) -> None:
        """``out_channels`` and a forward pass on data of the data's shape."""
        variance = context.model.variance
        wanted = data.channels * (variance.output_multiplier if variance else 1)
        if self.out_channels != wanted:
            raise ConfigError(
                f"denoiser.out_channels = {self.out_channels} but the data's "
                f"{data.channels} channels with variance "
                f"{context.names.get('variance', 'fixed-large')!r} need {wanted}"
            )
        device = context.device
        probe = torch.zeros((1, *data.shape), device=device)
        # a channel-conditioned network always needs its channels: give it the null condition
        conditioner = context.model.conditioner
        null = conditioner.null(1, device) if conditioner is not None else None
        try:
            with torch.no_grad():
                self(probe, torch.zeros(1, dtype=torch.long, device=device), null)
        except (ValueError, RuntimeError) as exc:
            raise ConfigError(
                f"denoiser {context.name!r} cannot take data of shape {tuple(data.shape)}: {exc}"
            ) from exc


class Conditioner(Component, nn.Module, abc.ABC):
    """Turns raw conditions (labels, images, masks, text) into a :class:`Conditioning`.

    ``forward(raw)`` encodes a batch of raw conditions; :meth:`null` gives the "no condition"
    used by classifier-free guidance and by condition dropout during training. The three
    ``*_dim`` properties tell the pipeline what the denoiser must be built to accept
    (0 means the field is not produced).
    """

    def __init__(self, params: Params | None = None) -> None:
        nn.Module.__init__(self)
        self._set_params(params)

    extra_channels: int = 0
    embedding_dim: int = 0
    context_dim: int = 0

    def bind(self, model: DiffusionModel) -> None:
        """Called once by :class:`~ddpmkit.DiffusionModel` with the model this conditioner
        serves. A conditioner that needs the model's maths (noise conditioning augmentation
        forward-diffuses its input with the model's q(x_s | x_0)) keeps a reference here,
        outside its submodules; the default does nothing."""

    @abc.abstractmethod
    def forward(self, raw: Any) -> Conditioning:
        """Encode a batch of raw conditions."""

    @abc.abstractmethod
    def null(self, batch_size: int, device: torch.device) -> Conditioning:
        """The null condition for ``batch_size`` samples."""

    def raw_from_batch(self, batch: Batch) -> Any:
        """The raw conditions of a training batch (default: its labels)."""
        return batch.labels

    def default_conditions(self, count: int) -> Any:
        """Raw conditions to sample ``count`` samples with when the user names none (default:
        none; a conditioner that can enumerate its conditions overrides this)."""
        raise ConfigError(f"{type(self).__name__} needs the conditions to sample with")


class Guidance(Component, abc.ABC):
    """Changes a prediction during sampling by wrapping the model's prediction function.

    ``guide(model, predict, x_t, t, cond)`` returns a new :class:`Prediction`; ``predict`` is
    the (possibly already guided) prediction function, so guidances compose by nesting, and
    samplers never know which guidance, if any, is active.
    """

    needs_conditioner: ClassVar[bool] = False
    """True for a guidance that needs the model's conditioner (classifier-free guidance mixes
    conditional and null-condition predictions)."""

    def check(self, context: CheckContext) -> None:
        """Refuse a model without a conditioner when :attr:`needs_conditioner` is set."""
        if self.needs_conditioner and context.model.conditioner is None:
            raise ConfigError(
                f"{type(self).__name__} needs a conditioner (it mixes conditional and "
                "null-condition predictions), but the model has none"
            )

    def raw_from_batch(self, batch: Batch) -> Any:
        """The raw conditions this guidance reads from a data batch, for sampling a model
        without a conditioner (CLIP guidance: the captions); ``None`` (the default): none."""
        return None

    def for_conditions(self, raw: Any) -> Guidance:
        """This guidance for one sampler call whose samples have the raw conditions ``raw``
        (``sample.labels``, ``sample.prompts``...): a guidance that needs them beyond the
        encoded ``cond`` (CLIP guidance encodes the prompts with its own text encoder) returns
        a copy that holds them. The default ignores them and returns ``self``."""
        return self

    @abc.abstractmethod
    def guide(
        self,
        model: DiffusionModel,
        predict: PredictFn,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: Conditioning | None,
    ) -> Prediction:
        """Return the guided prediction at ``(x_t, t)``."""


class Sampler(Component, abc.ABC):
    """The reverse-time loop and its update rule.

    ``sample(model, shape)`` draws ``x_T ~ N(0, I)`` (or starts at a given ``x_T``) and returns
    ``x_0`` of ``shape``. All randomness comes from ``generator``, so one seed gives one sample.
    A sampler asks ``model`` (through any ``guidance``) for a :class:`Prediction` and never
    branches on the parameterization.
    """

    @abc.abstractmethod
    def sample(
        self,
        model: DiffusionModel,
        shape: tuple[int, ...],
        *,
        x_T: torch.Tensor | None = None,
        cond: Conditioning | None = None,
        guidance: Guidance | list[Guidance] | None = None,
        generator: torch.Generator | None = None,
        callback: SamplerCallback | None = None,
    ) -> torch.Tensor:
        """Run the reverse process and return x_0."""


_WORD = re.compile(r"[a-z0-9]+")


def caption_words(text: str) -> list[str]:
    """The words of a caption: its lower-cased runs of letters and digits (punctuation drops)."""
    return _WORD.findall(text.lower())


@attrs.frozen
class Example:
    """One example: ``image`` ``(C, H, W)`` in ``[-1, 1]``, a ``label`` (-1: none), a caption."""

    image: torch.Tensor
    label: int = -1
    caption: str = ""


@attrs.frozen
class Batch:
    """A batch of examples: ``images`` ``(B, C, H, W)``, ``labels`` ``(B,)``, ``captions``."""

    images: torch.Tensor
    labels: torch.Tensor
    captions: tuple[str, ...]


class Dataset(Component, abc.ABC):
    """A data set component (kind ``dataset``, a supporting kind beside the six interfaces).

    Examples are indexed ``0 .. len-1``; every example has ``channels`` channels and is
    ``image_size`` pixels square. ``num_classes`` is 0 for unlabelled data. A data set whose
    generated images can be read back (``[eval] attributes``) registers an
    :class:`AttributeReader` under its own name.
    """

    channels: int
    image_size: int
    num_classes: int = 0

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one example: ``(channels, image_size, image_size)``; vector data overrides
        it with ``(channels,)``."""
        return (self.channels, self.image_size, self.image_size)

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of examples."""

    @abc.abstractmethod
    def __getitem__(self, index: int) -> Example:
        """The example at ``index``."""

    def batch(self, indices: list[int]) -> Batch:
        """Collate the examples at ``indices`` (override for a faster path)."""
        examples = [self[i] for i in indices]
        return Batch(
            images=torch.stack([e.image for e in examples]),
            labels=torch.tensor([e.label for e in examples], dtype=torch.long),
            captions=tuple(e.caption for e in examples),
        )

    def caption_vocabulary(self) -> list[str]:
        """The sorted distinct words (:func:`caption_words`) of this data set's captions: the
        vocabulary a text conditioner is built with. The default reads every example."""
        found: set[str] = set()
        for start in range(0, len(self), 256):
            batch = self.batch(list(range(start, min(len(self), start + 256))))
            found.update(w for caption in batch.captions for w in caption_words(caption))
        return sorted(found)

    def check(self, context: CheckContext) -> None:
        """A data set with no example is refused."""
        if len(self) == 0:
            name = context.name or type(self).__name__
            raise ConfigError(f"{context.key or 'data'}: data set {name!r} is empty")


class AttributeReader(Component, abc.ABC):
    """Reads generated images back into the attributes a data set draws (kind
    ``attribute-reader``, optional: most data sets have none).

    A reader is registered under the name of the data set it reads (``shapes``), which is how
    ``[eval] attributes`` finds it; it is built with its own (usually empty) ``Params`` and
    :meth:`bind`-ed to the data set before it reads anything. Attributes are named strings,
    e.g. ``{"shape": "circle", "color": "red", "position": "left"}``.
    """

    def bind(self, dataset: Dataset) -> None:
        """Called once with the data set whose samples this reader reads, before any reading.
        A reader whose labels mean something only through the data set's params (the order
        of ``shapes``' shapes) records it here; the default does nothing."""

    @abc.abstractmethod
    def read_attributes(self, images: torch.Tensor) -> list[dict[str, str] | None]:
        """The attributes each of ``images`` (``(B, *dataset.shape)`` in ``[-1, 1]``) shows,
        ``None`` for an image that shows none: one entry per image."""

    def label_attributes(self, label: int) -> dict[str, str] | None:
        """The attributes a label stands for (``shapes``: ``{"shape": "circle"}``), against
        which :meth:`read_attributes` of a sample conditioned on it is checked; ``None``
        (the default) when labels have no readable meaning."""
        return None

    def caption_attributes(self, caption: str) -> dict[str, str] | None:
        """The attributes a caption (a text prompt) stands for (``shapes``: ``"a red circle"``
        -> ``{"shape": "circle", "color": "red"}``), against which :meth:`read_attributes` of a
        sample drawn for it is checked; ``None`` (the default) when captions have no readable
        meaning."""
        return None


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
