"""The reverse-time loop shared by the bundled samplers; each sampler supplies one update."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import ClassVar

import torch
from pydantic import Field

from ddpmkit import (
    CheckContext,
    Conditioning,
    DiffusionModel,
    Guidance,
    Params,
    Prediction,
    Sampler,
    SamplerCallback,
    SamplerStep,
    column,
    guided_predict,
    randn,
)


class ChainSamplerParams(Params):
    """Options every bundled sampler shares."""

    clip_x0: bool = Field(
        False,
        description=(
            "Static thresholding: clamp the predicted x_0 to [-1, 1] at every step (and "
            "re-derive eps from it); useful for image data scaled to [-1, 1]."
        ),
    )
    dynamic_threshold: bool = Field(
        False,
        description=(
            "Dynamic thresholding (Saharia et al. 2022, section 2.3): per sample, s = the "
            "dynamic_percentile of |x_0|, at least 1; x_0 <- clamp(x_0, -s, s) / s (eps "
            "re-derived). Keeps x_0 in [-1, 1] too; applied before clip_x0."
        ),
    )
    dynamic_percentile: float = Field(
        0.995, gt=0.0, le=1.0, description="The percentile p of |x_0| dynamic thresholding uses."
    )


class ChainSampler(Sampler):
    """x_T ~ N(0, I), then one :meth:`step` per timestep of :meth:`timesteps`, down to x_0."""

    Params: ClassVar[type[ChainSamplerParams]] = ChainSamplerParams
    params: ChainSamplerParams

    @abc.abstractmethod
    def timesteps(self, model: DiffusionModel) -> list[int]:
        """The training indices visited, in decreasing order."""

    @abc.abstractmethod
    def step(
        self,
        model: DiffusionModel,
        pred: Prediction,
        x_t: torch.Tensor,
        t: int,
        t_prev: int,
        generator: torch.Generator | None,
        *,
        abar: Sequence[float],
        previous: tuple[int, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """One reverse update of ``x_t`` from index ``t`` to index ``t_prev`` (-1 means x_0).

        ``abar`` is abar at every training index as float64 host numbers (read once per chain),
        ``previous`` the index and x0_hat of the step before (None on the first), which a
        multistep solver extrapolates from; noise is drawn from ``generator``.
        """

    def check(self, context: CheckContext) -> None:
        """The step list must be computable for the model's schedule."""
        self.timesteps(context.model)

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
        """Run the chain; see :class:`ddpmkit.Sampler`."""
        device = model.alphas_cumprod.device
        predict = guided_predict(model, guidance)
        steps = self.timesteps(model)
        abar = model.alphas_cumprod64.tolist()  # float64 host numbers, read once per chain
        previous: tuple[int, torch.Tensor] | None = None
        # inference mode (no autograd bookkeeping at all) unless a guidance may need gradients
        with torch.inference_mode(guidance is None), torch.no_grad():
            # x_T ~ N(0, I)
            x = randn(shape, generator=generator, device=device) if x_T is None else x_T
            x = x.to(device)
            for i, (t, t_prev) in enumerate(zip(steps, [*steps[1:], -1], strict=True)):
                # the (guided, thresholded) prediction of eps and x0 at x_t
                t_batch = torch.full((shape[0],), t, device=device, dtype=torch.long)
                pred = self.threshold(model, predict(x, t_batch, cond), x, t_batch)
                # the sampler's update x_t -> x_{t_prev}
                x = self.step(model, pred, x, t, t_prev, generator, abar=abar, previous=previous)
                previous = (t, pred.x0)
                if callback is not None:
                    callback(SamplerStep(index=i, total=len(steps), t=t, x=x, x0=pred.x0))
        return x

    def threshold(
        self, model: DiffusionModel, pred: Prediction, x_t: torch.Tensor, t: torch.Tensor
    ) -> Prediction:
        """Dynamic then static thresholding of x0, as the options ask, with eps made to agree
        with the thresholded x0; ``pred`` itself when neither is on."""
        if not (self.params.dynamic_threshold or self.params.clip_x0):
            return pred
        x0 = pred.x0
        if self.params.dynamic_threshold:
            x0 = dynamic_threshold(x0, self.params.dynamic_percentile)
        if self.params.clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
        return model.with_x0(pred, x0, x_t, t)


def dynamic_threshold(x0: torch.Tensor, percentile: float) -> torch.Tensor:
    """Dynamic thresholding of Saharia et al. (2022, Imagen, section 2.3), per sample."""
    # s = the p-th percentile of |x0| over each sample's values, and at least 1
    s = torch.quantile(x0.detach().flatten(1).abs().float(), percentile, dim=1).clamp(min=1.0)
    s = column(s.to(x0.dtype), x0.ndim)
    # threshold x0 to [-s, s], then divide by s
    return torch.maximum(torch.minimum(x0, s), -s) / s
