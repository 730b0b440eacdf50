"""CLIP guidance (GLIDE, Nichol et al. 2021, with its noised CLIP): the gradient of the image-text
score f(x_t, t) . g(c), as a CLIP logit, pushes every prediction towards the prompt."""

from __future__ import annotations

import abc
import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from ddpmkit import (
    Batch,
    Conditioning,
    DdpmkitError,
    DiffusionModel,
    Guidance,
    Params,
    PredictFn,
    Prediction,
)
from ddpmkit_conditioning.clip.model import NoisedClip
from ddpmkit_conditioning.clip.stage import load_noised_clip
from ddpmkit_conditioning.score import guide_eps, input_gradient
from ddpmkit_conditioning.text.conditioner import as_captions


class ContrastiveGuidance(Guidance, abc.ABC):
    """Guidance by an image-text model: a subclass gives unit image embeddings of ``x_t``
    and unit text embeddings of captions; this class turns their dot product into the
    eps shift. It reads the prompts (``sample.prompts``, else the data's captions) through
    :meth:`for_conditions`; without prompts it passes the prediction through unguided."""

    scale: float
    text: torch.Tensor | None = None
    """``(N, D)``: g(c) of the prompts this copy guides towards (set by for_conditions)."""

    @abc.abstractmethod
    def image_features(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """f(x_t, t), ``(B, D)``, differentiable in ``x_t``."""

    @abc.abstractmethod
    def text_features(self, captions: Sequence[str]) -> torch.Tensor:
        """g(c), ``(N, D)``."""

    @abc.abstractmethod
    def logit_scale(self) -> float:
        """exp(logit_scale) = 1 / tau, CLIP's learned temperature: the score guided along is
        the logit (f . g) / tau, as GLIDE's code does, so s is on the scale of a log-probability
        (like classifier guidance's)."""

    def raw_from_batch(self, batch: Batch) -> list[str]:
        """The data's captions: the prompts when ``sample.prompts`` gives none."""
        return list(batch.captions)

    def for_conditions(self, raw: Any) -> ContrastiveGuidance:
        """A copy that guides towards the captions ``raw`` (one per sample)."""
        guided = copy.copy(self)
        with torch.no_grad():
            guided.text = self.text_features(as_captions(raw))
        return guided

    def score_gradient(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """grad_{x_t} (f(x_t, t) . g(c)) / tau, one prompt per sample (a batch that is k copies
        of the prompts' batch, as classifier-free guidance makes, repeats them k times)."""
        assert self.text is not None
        if x_t.shape[0] % self.text.shape[0]:
            raise ValueError(
                f"{x_t.shape[0]} samples but {self.text.shape[0]} prompts: one prompt per sample"
            )
        repeats = x_t.shape[0] // self.text.shape[0]
        text = self.text

        def logit(x: torch.Tensor) -> torch.Tensor:
            # the CLIP logit f(x_t, t) . g(c) / tau of each sample (clones: normal tensors, so
            # a sampler under torch.inference_mode can still differentiate)
            g = text.clone().to(x.device).repeat(repeats, 1)
            return self.logit_scale() * (self.image_features(x, t.clone()) * g).sum(dim=-1)

        return input_gradient(logit, x_t)

    def guide(
        self,
        model: DiffusionModel,
        predict: PredictFn,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: Conditioning | None,
    ) -> Prediction:
        """The prediction shifted along grad f(x_t, t) . g(c) with scale s."""
        inner = predict(x_t, t, cond)
        if self.text is None or self.scale == 0:
            return inner
        # eps~ = eps - sqrt(1 - abar_t) s grad_x (f(x_t, t) . g(c) / tau), x0 re-derived
        return guide_eps(model, inner, x_t, t, self.score_gradient(x_t, t), self.scale)


class ClipGuidanceParams(Params):
    """Parameters of ``clip`` guidance."""

    clip: str = Field(
        ..., description="The name of the [stages.<name>] table (a train-clip stage) to use."
    )
    scale: float = Field(
        1.0, ge=0.0, le=1e6, description="Guidance scale s (0: the unguided model)."
    )


class ClipGuidance(ContrastiveGuidance):
    """CLIP guidance with the noised CLIP a ``train-clip`` stage trained (GLIDE's noised CLIP):
    eps~ = eps(x_t) - sqrt(1 - abar_t) s grad_{x_t} (f(x_t, t) . g(c) / tau).

    Works for an unconditional model and a text-conditional one (composed with
    classifier-free guidance in ``[[sample.guidance]]``); the prompts are ``sample.prompts``
    or the data's captions.
    """

    Params = ClipGuidanceParams
    params: ClipGuidanceParams
    stage_params = ("clip",)

    def __init__(self, params: ClipGuidanceParams | None = None) -> None:
        super().__init__(params)
        self.scale = self.params.scale
        self.network: NoisedClip | None = None

    def attach(self, stages: Mapping[str, Path]) -> None:
        """Load the noised CLIP of the stage named by ``clip``."""
        name = self.params.clip
        if name not in stages:
            raise DdpmkitError(f"clip guidance: no stage named {name!r} ran in this run")
        self.network = load_noised_clip(stages[name], what=f"clip guidance ({name!r})")

    def _network(self) -> NoisedClip:
        if self.network is None:
            raise DdpmkitError(
                f"clip guidance: the stage {self.params.clip!r} is not attached (run the "
                "pipeline, or call attach({name: folder}))"
            )
        return self.network

    def image_features(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The noised CLIP's f(x_t, t), unit length."""
        network = self._network().to(x_t.device)
        return network.image_features(x_t, t)

    def text_features(self, captions: Sequence[str]) -> torch.Tensor:
        """The noised CLIP's g(c), unit length."""
        return self._network().text_features(captions)

    def logit_scale(self) -> float:
        """1 / tau as trained (clamped at 100, as in training)."""
        return float(self._network().temperature_inverse().detach())
