"""The six component interfaces of ddpmkit: schedule, parameterization, denoiser,
conditioner, guidance and sampler.

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
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import Field
from torch import nn

from ddpmkit.core.component import Component, Params, _ParamsModel
from ddpmkit.core.errors import ConfigError
from ddpmkit.core.values import (
    ZERO_TERMINAL_SNR,
    Batch,
    Conditioning,
    PredictFn,
    Prediction,
    SamplerCallback,
)
from ddpmkit.core.wiring import CheckContext

if TYPE_CHECKING:  # pragma: no cover - import cycle only for type checkers
    from ddpmkit.core.data import Dataset
    from ddpmkit.core.model import DiffusionModel


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
