"""Classifier guidance (Dhariwal & Nichol 2021, section 4): the ``train-classifier`` stage that
fits a noise-aware classifier p_phi(y | x_t, t), and the ``classifier`` guidance that follows
its gradient."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from pydantic import Field
from torch import nn

from ddpmkit import (
    Batch,
    CheckContext,
    Conditioning,
    ConfigError,
    Dataset,
    DdpmkitError,
    DiffusionModel,
    Guidance,
    Params,
    PredictFn,
    Prediction,
    Stage,
    StageContext,
    load_network,
    network_metadata,
    noised_batch,
    randn_like,
)
from ddpmkit_conditioning.classifier_net import ClassifierNet, ClassifierNetParams, ClassifierShape
from ddpmkit_conditioning.score import SCORE_FORMS, ScoreForm, input_gradient

NETWORK = "ddpmkit-classifier"
"""The ``network`` entry of the weights' metadata: what the guidance knows how to rebuild."""

ACCURACY_FILE = "accuracy.json"
"""The trained classifier's accuracy at a few noise levels, in the stage's folder."""


class TrainClassifierParams(ClassifierShape):
    """Parameters of the ``train-classifier`` stage: the network's shape and its training."""

    steps: int = Field(500, ge=1, le=10_000_000, description="Training steps.")
    batch_size: int = Field(64, ge=1, le=65536, description="Examples per step.")
    lr: float = Field(1e-3, gt=0.0, le=1.0, description="AdamW learning rate.")
    log_every: int = Field(
        50, ge=1, le=1_000_000, description="Steps between lines of the stage's metrics.jsonl."
    )


class TrainClassifierStage(Stage):
    """Fits p_phi(y | x_t, t) by cross-entropy on x_t = q_sample(x_0, t, eps), t uniform over
    the pipeline model's T (Dhariwal & Nichol 2021, section 4.1).

    Writes ``model.safetensors`` (the weights, with the network's params as metadata so the
    guidance can rebuild it), ``metrics.jsonl`` (loss and accuracy) and ``accuracy.json`` (the
    trained network's accuracy on the data at five noise levels).
    """

    Params = TrainClassifierParams
    params: TrainClassifierParams

    def network_for(self, dataset: Dataset) -> ClassifierNet:
        """A fresh classifier of this stage's shape for ``dataset``'s channels and classes."""
        shape = self.params.model_dump(include=set(ClassifierShape.model_fields))
        return ClassifierNet(
            ClassifierNetParams(
                **shape, in_channels=dataset.channels, num_classes=dataset.num_classes
            )
        )

    def check(self, context: CheckContext) -> None:
        """Labelled images whose size the network can downsample."""
        dataset = context.dataset
        if dataset is None:
            return
        if dataset.num_classes < 2 or len(dataset.shape) != 3:
            raise ConfigError(
                f"train-classifier needs labelled images (2 or more classes); the data "
                f"{type(dataset).__name__} has shape {tuple(dataset.shape)} and "
                f"{dataset.num_classes} classes"
            )
        network = self.network_for(dataset)
        try:
            with torch.no_grad():
                network(torch.zeros(1, *dataset.shape), torch.zeros(1, dtype=torch.long))
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc

    def run(self, context: StageContext) -> None:
        """Train, save the network with its params, and measure its accuracy."""
        model, device = context.model, context.device
        network = self.network_for(context.dataset).to(device)

        def loss(batch: Batch, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
            x_0, y = batch.images.to(device), batch.labels.to(device)
            # x_t ~ q(x_t | x_0) at t ~ U{0, ..., T-1}, over the model's own schedule
            x_t, t = noised_batch(model, x_0, generator)
            # cross-entropy of the true class under p_phi(y | x_t, t)
            logits = network(x_t, t)
            accuracy = (logits.argmax(dim=1) == y).float().mean()
            return F.cross_entropy(logits, y), {"accuracy": float(accuracy)}

        p = self.params
        context.fit(
            network,
            loss,
            steps=p.steps,
            batch_size=p.batch_size,
            lr=p.lr,
            log_every=p.log_every,
            metadata={"network": NETWORK, "params": network.params.model_dump(mode="json")},
        )
        accuracy = accuracy_by_noise_level(network, model, context.dataset, device, context.seed)
        (context.directory / ACCURACY_FILE).write_text(json.dumps(accuracy, indent=2) + "\n")


@torch.no_grad()
def accuracy_by_noise_level(
    network: nn.Module,
    model: DiffusionModel,
    dataset: Dataset,
    device: torch.device,
    seed: int,
    count: int = 256,
) -> dict[str, list[int] | list[float]]:
    """The classifier's accuracy on the first ``count`` examples, noised to five training
    indices (0, T/4, T/2, 3T/4, T-1): ``{"t": [...], "accuracy": [...]}``."""
    generator = torch.Generator().manual_seed(seed)
    batch = dataset.batch(list(range(min(count, len(dataset)))))
    x_0, y = batch.images.to(device), batch.labels.to(device)
    T = model.T
    indices = sorted({0, T // 4, T // 2, 3 * T // 4, T - 1})
    accuracy = []
    for index in indices:
        t = torch.full((x_0.shape[0],), index, dtype=torch.long, device=device)
        x_t = model.q_sample(x_0, t, randn_like(x_0, generator))
        accuracy.append(float((network(x_t, t).argmax(dim=1) == y).float().mean()))
    return {"t": indices, "accuracy": accuracy}


class ClassifierGuidanceParams(Params):
    """Parameters of ``classifier`` guidance."""

    classifier: str = Field(
        ..., description="The `[stages.<name>]` (a `train-classifier` stage) whose network guides."
    )
    scale: float = Field(
        1.0, ge=0.0, le=1000.0, description="Gradient scale s (0: exactly the unguided model)."
    )
    form: ScoreForm = Field(
        "score",
        description="score: eps~ = eps - sqrt(1 - abar_t) s grad log p(y | x_t) (Algorithm 2; "
        "for ddim and every sampler); mean-shift: mu + s Sigma grad log p(y | x_t) "
        "(Algorithm 1; for ddpm on the full chain).",
    )


class ClassifierGuidance(Guidance):
    """Guidance by the gradient of a noise-aware classifier, grad_x log p_phi(y | x_t, t)
    (Dhariwal & Nichol 2021, Algorithms 1 and 2).

    The network comes from the ``train-classifier`` stage named by ``classifier`` (or
    :meth:`use_network`); the class y of each sample from :meth:`for_conditions`, which the
    pipeline calls with ``sample.labels`` (or the data's labels). The model need not be
    conditional: p(x_t) p_phi(y | x_t)^s guides an unconditional model towards class y, and a
    class-conditional one further.
    """

    Params = ClassifierGuidanceParams
    params: ClassifierGuidanceParams
    stage_params = ("classifier",)

    def __init__(self, params: ClassifierGuidanceParams | None = None) -> None:
        super().__init__(params)
        self.network: nn.Module | None = None
        self.labels: torch.Tensor | None = None

    def attach(self, stages: Mapping[str, Path]) -> None:
        """Rebuild the stage's classifier from its metadata and load its weights."""
        name = self.params.classifier
        what = f"classifier guidance (classifier = {name!r})"
        meta = network_metadata(stages[name], what=what)
        if meta.get("network") != NETWORK:
            raise DdpmkitError(f"{what}: stage {name!r} did not train a classifier")
        network = ClassifierNet(ClassifierNetParams(**meta["params"]))
        self.use_network(load_network(network, stages[name], what=what))

    def use_network(self, network: nn.Module) -> ClassifierGuidance:
        """Guide with ``network``, ``(x_t, t) -> logits (B, K)`` of p(y | x_t, t); returns
        this guidance."""
        self.network = network
        return self

    def raw_from_batch(self, batch: Batch) -> torch.Tensor:
        """The labels: what this guidance reads from the data."""
        return batch.labels

    def for_conditions(self, raw: Any) -> ClassifierGuidance:
        """A copy that guides sample b towards class ``raw[b]``."""
        try:
            labels = torch.as_tensor(raw, dtype=torch.long)
        except (TypeError, ValueError, RuntimeError):  # captions, say
            labels = torch.full((1,), -1)
        if labels.ndim != 1 or labels.numel() == 0 or bool((labels < 0).any()):
            shown = raw.tolist() if isinstance(raw, torch.Tensor) else raw
            raise ConfigError(
                "classifier guidance needs a class label (0 .. K-1) for every sample, from "
                f"sample.labels or the data's labels; got {str(shown)[:60]} (-1: unlabelled)"
            )
        bound = copy.copy(self)
        bound.labels = labels
        return bound

    def _labels_for(self, batch: int, device: torch.device) -> torch.Tensor:
        """The labels of a batch; a batch that repeats the samples (classifier-free guidance
        doubles it) repeats their labels."""
        if self.labels is None:
            raise DdpmkitError(
                "classifier guidance has no class labels: use guidance.for_conditions(labels) "
                "(a pipeline does, from sample.labels or the data's labels)"
            )
        n = self.labels.numel()
        if batch % n:
            raise DdpmkitError(f"classifier guidance: {n} labels for a batch of {batch}")
        return self.labels.to(device).repeat(batch // n)

    def guide(
        self,
        model: DiffusionModel,
        predict: PredictFn,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: Conditioning | None,
    ) -> Prediction:
        """The prediction of p(x_t) p_phi(y | x_t)^s at ``(x_t, t)``."""
        pred = predict(x_t, t, cond)
        if self.params.scale == 0.0:
            return pred
        if self.network is None:
            raise DdpmkitError(
                f"classifier guidance: no classifier (stage {self.params.classifier!r} not "
                "attached; use attach(folders) or use_network(network))"
            )
        network = self.network.to(x_t.device)
        y = self._labels_for(x_t.shape[0], x_t.device)

        def log_p(x: torch.Tensor) -> torch.Tensor:
            # log p_phi(y | x_t, t) of each sample's own class (y cloned: no inference tensor)
            log_probs = network(x, t).log_softmax(dim=-1)
            return log_probs.gather(1, y.clone()[:, None])[:, 0]

        # grad_x log p_phi(y | x_t, t)
        grad = input_gradient(log_p, x_t)
        # with scale s: the score form (Algorithm 2) or the ancestral mean shift (Algorithm 1)
        return SCORE_FORMS[self.params.form](model, pred, x_t, t, grad, self.params.scale)
