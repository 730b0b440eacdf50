"""A pipeline's ``[stages]``: running them into the run folder, and the training loop that
stages which train an auxiliary network (a noise-aware classifier, a noised CLIP) share."""

from __future__ import annotations

import functools
import json
import math
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ddpmkit.app.train import batch_indices
from ddpmkit.core.checkpoint import WEIGHTS_FILE, save_checkpoint
from ddpmkit.core.errors import DdpmkitError
from ddpmkit.core.interfaces import Batch, Dataset, Stage, StageContext
from ddpmkit.core.model import DiffusionModel
from ddpmkit.core.wiring import PipelineRun, RunPipeline, no_pipeline_runner

DONE_FILE = "stage.json"
"""Written into a stage's folder when its :meth:`~ddpmkit.Stage.run` returned."""

StageLoss = Callable[[Batch, torch.Generator], tuple[torch.Tensor, dict[str, float]]]
"""``(batch, generator) -> (scalar loss, numbers to log)``: one training step's loss."""


def stage_directories(run: Path, names: Mapping[str, object] | list[str]) -> dict[str, Path]:
    """``<run>/stages/<name>`` for each stage name."""
    return {name: run / "stages" / name for name in names}


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
        context = StageContext(
            name, folder, model, dataset, device, seed, progress, run_pipeline=runner
        )
        stage.run(context)
        done = {"type": type(stage).__name__, "params": stage.params.model_dump(mode="json")}
        tmp = folder / f".{DONE_FILE}.tmp"
        tmp.write_text(json.dumps(done, indent=2) + "\n")
        tmp.replace(folder / DONE_FILE)
    return folders


def fit_network(
    network: nn.Module,
    loss_fn: StageLoss,
    context: StageContext,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    log_every: int = 50,
    metadata: Mapping[str, object] | None = None,
) -> Path:
    """Train ``network`` with AdamW on ``loss_fn`` over shuffled batches of the stage's data,
    then save it to ``<stage folder>/model.safetensors`` (with ``metadata``); returns the path.

    Shows step, loss, it/s and ETA; every ``log_every`` steps appends the mean of the logged
    numbers to the stage's ``metrics.jsonl``. The data order is
    :func:`~ddpmkit.app.train.batch_indices` of the stage's seed and the noise comes from one
    generator seeded with it, so the same seed trains the same network.
    """
    network.to(context.device).train()
    optimizer = torch.optim.AdamW(network.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(context.seed)
    size = min(batch_size, len(context.dataset))
    bar = tqdm(range(steps), desc=f"stage {context.name}", disable=not context.progress)
    window: dict[str, float] = {}
    count = 0
    start = time.perf_counter()
    with (context.directory / "metrics.jsonl").open("a") as log:
        for step in bar:
            indices = batch_indices(len(context.dataset), size, step, context.seed)
            batch = context.dataset.batch(indices)
            loss, numbers = loss_fn(batch, generator)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise DdpmkitError(
                    f"stage {context.name}: the loss is {value} at step {step + 1}; lower its lr"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for key, number in {"loss": value, **numbers}.items():
                window[key] = window.get(key, 0.0) + number
            count += 1
            if (step + 1) % log_every == 0 or step + 1 == steps:
                means = {key: total / count for key, total in window.items()}
                elapsed = time.perf_counter() - start
                log.write(json.dumps({"step": step + 1, **means, "time": elapsed}) + "\n")
                log.flush()
                bar.set_postfix({k: f"{v:.4g}" for k, v in means.items()})
                window, count = {}, 0
    bar.close()
    network.eval()
    return save_checkpoint(
        context.directory / WEIGHTS_FILE, network.state_dict(), dict(metadata or {}, steps=steps)
    )
