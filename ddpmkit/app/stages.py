"""A pipeline's ``[stages]``: running them into the run folder, and the training of the
auxiliary networks some stages train (a noise-aware classifier, a noised CLIP) in the trainer's
loop, which :attr:`~ddpmkit.StageContext.fit` reaches."""

from __future__ import annotations

import functools
import json
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from ddpmkit.app.config import TrainConfig
from ddpmkit.app.train import MetricsCallback, TrainLoop
from ddpmkit.core.checkpoint import WEIGHTS_FILE, save_checkpoint
from ddpmkit.core.data import Dataset
from ddpmkit.core.errors import DdpmkitError
from ddpmkit.core.model import DiffusionModel
from ddpmkit.core.training import Stage, StageContext, StageLoss
from ddpmkit.core.values import Batch
from ddpmkit.core.wiring import PipelineRun, RunPipeline, no_pipeline_runner

DONE_FILE = "stage.json"
"""Written into a stage's folder when its :meth:`~ddpmkit.Stage.run` returned."""


def stage_directories(run: Path, names: Mapping[str, object] | list[str]) -> dict[str, Path]:
    """``<run>/stages/<name>`` for each stage name."""
    return {name: run / "stages" / name for name in names}


def stage_context(
    name: str,
    directory: Path,
    model: DiffusionModel,
    dataset: Dataset,
    device: torch.device,
    seed: int,
    progress: bool = True,
    run_pipeline: RunPipeline = no_pipeline_runner,
) -> StageContext:
    """The context of stage ``name`` writing into ``directory``, whose ``fit`` trains a
    network in the trainer's loop (:class:`~ddpmkit.app.train.TrainLoop`) and whose
    ``run_pipeline`` runs a nested pipeline there."""
    fit = _StageFit(name, directory, dataset, device, seed, progress)
    return StageContext(
        name, directory, model, dataset, device, seed, progress, fit=fit, run_pipeline=run_pipeline
    )


def run_stages(
    stages: Mapping[str, Stage],
    run: Path,
    *,
    model: DiffusionModel,
    dataset: Dataset,
    device: torch.device,
    seed: int,
    progress: bool = True,
    run_pipeline: Callable[..., PipelineRun] | None = None,
) -> dict[str, Path]:
    """Run each stage in order into ``<run>/stages/<name>/``; returns the folders by name.

    ``run_pipeline(data, directory=, seed=, device=, progress=)`` is the application's
    runner of a nested pipeline, given to each stage (as its context's ``run_pipeline``) for
    its own folder.

    A stage whose folder holds :data:`DONE_FILE` finished in an earlier run of this folder
    (``--resume``) and is kept; a folder without it is what an interrupted stage left, and is
    emptied and the stage run again.
    """
    folders = stage_directories(run, list(stages))
    for name, stage in stages.items():
        folder = folders[name]
        if (folder / DONE_FILE).is_file():
            if progress:
                print(f"stage {name}: finished in an earlier run, kept")
            continue
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        runner: RunPipeline = no_pipeline_runner
        if run_pipeline is not None:
            runner = functools.partial(
                run_pipeline, directory=folder, seed=seed, device=device, progress=progress
            )
        context = stage_context(name, folder, model, dataset, device, seed, progress, runner)
        stage.run(context)
        done = {"type": type(stage).__name__, "params": stage.params.model_dump(mode="json")}
        tmp = folder / f".{DONE_FILE}.tmp"
        tmp.write_text(json.dumps(done, indent=2) + "\n")
        tmp.replace(folder / DONE_FILE)
    return folders


@attrs.frozen
class _StageFit:
    """:attr:`~ddpmkit.StageContext.fit` of one stage (see :class:`~ddpmkit.FitNetwork`)."""

    name: str
    directory: Path
    dataset: Dataset
    device: torch.device
    seed: int
    progress: bool

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
        """Train ``network`` in the trainer's loop, save it and return its path."""
        network.to(self.device)
        if steps > 0:
            # AdamW's own defaults but lr; no warm-up, no clipping
            size = min(batch_size, len(self.dataset))
            config = TrainConfig(
                steps=steps,
                batch_size=size,
                lr=lr,
                weight_decay=0.01,
                grad_clip=0.0,
                log_every=log_every,
            )
            start = time.perf_counter()
            with (self.directory / "metrics.jsonl").open("a") as log:

                def write(step: int, metrics: dict[str, Any]) -> None:
                    elapsed = time.perf_counter() - start
                    log.write(json.dumps({"step": step, **metrics, "time": elapsed}) + "\n")
                    log.flush()

                _NetworkFit(network, loss_fn, self, config, write).train()
        network.eval()
        return save_checkpoint(
            self.directory / WEIGHTS_FILE, network.state_dict(), dict(metadata or {}, steps=steps)
        )


class _NetworkFit(TrainLoop):
    """A stage's network in the training loop: the loss is the stage's function of the batch
    and of one generator seeded with the stage's seed; its numbers are logged as means."""

    def __init__(
        self,
        network: nn.Module,
        loss_fn: StageLoss,
        stage: _StageFit,
        config: TrainConfig,
        on_metrics: MetricsCallback,
    ) -> None:
        super().__init__(
            network,
            stage.dataset,
            config,
            device=stage.device,
            seed=stage.seed,
            on_metrics=on_metrics,
            progress=stage.progress,
            desc=f"stage {stage.name}",
        )
        self.name = stage.name
        self.loss_fn = loss_fn
        self.generator = torch.Generator().manual_seed(stage.seed)
        self.numbers: dict[str, list[float]] = {}

    def loss(self, batch: Batch) -> torch.Tensor:
        """The stage's loss of ``batch``; its numbers are kept for the next log."""
        loss, numbers = self.loss_fn(batch, self.generator)
        for key, number in numbers.items():
            self.numbers.setdefault(key, []).append(number)
        return loss

    def metrics(self) -> dict[str, float]:
        """The means of the stage's numbers since the last log."""
        means = {key: sum(values) / len(values) for key, values in self.numbers.items()}
        self.numbers = {}
        return means

    def diverged(self, what: str) -> DdpmkitError:
        """The error that stops the stage: the step, what was not finite, what to do."""
        return DdpmkitError(
            f"stage {self.name}: training diverged at step {self.step}: {what}; lower its lr"
        )
