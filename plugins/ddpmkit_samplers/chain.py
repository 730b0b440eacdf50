"""The reverse-time loop shared by the bundled samplers; each sampler supplies one update."""

from __future__ import annotations

import abc
from typing import ClassVar

import torch
from pydantic import Field

from ddpmkit import (
    Conditioning,
    DiffusionModel,
    Guidance,
    Params,
    Prediction,
    Sampler,
    SamplerCallback,
    SamplerStep,
    eps_from_x0,
    guided_predict,
    randn,
)


class ChainSamplerParams(Params):
    """Options every bundled sampler shares."""

    clip_x0: bool = Field(
        False,
        description=(
            "Clamp the predicted x_0 to [-1, 1] at every step (and re-derive eps from it); "
            "useful for image data scaled to [-1, 1]."
        ),
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
    ) -> torch.Tensor:
        """One reverse update from index ``t`` to index ``t_prev`` (-1 means x_0)."""

    def check(self, model: DiffusionModel) -> None:
        """The step list must be computable for the model's schedule."""
        self.timesteps(model)

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
        with torch.no_grad():
            x = randn(shape, generator=generator, device=device) if x_T is None else x_T
            x = x.to(device)
            for i, t in enumerate(steps):
                t_prev = steps[i + 1] if i + 1 < len(steps) else -1
                t_batch = torch.full((shape[0],), t, device=device, dtype=torch.long)
                pred = predict(x, t_batch, cond)
                if self.params.clip_x0:
                    pred = _clip_x0(model, pred, x, t_batch)
                x = self.step(model, pred, x, t, t_prev, generator)
                if callback is not None:
                    callback(SamplerStep(index=i, total=len(steps), t=t, x=x, x0=pred.x0))
        return x


def _clip_x0(
    model: DiffusionModel, pred: Prediction, x_t: torch.Tensor, t: torch.Tensor
) -> Prediction:
    """Clamp x0 to [-1, 1] and make eps agree with the clamped x0."""
    x0 = pred.x0.clamp(-1.0, 1.0)
    alpha, sigma = model.alpha_sigma(t, x_t.ndim)
    return Prediction(eps=eps_from_x0(x_t, x0, alpha, sigma), x0=x0, output=pred.output)
