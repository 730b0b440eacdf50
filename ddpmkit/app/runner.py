"""Running a built pipeline: its stages, then ``[train]``, ``[sample]`` and ``[eval]``, into
a run folder, with the hooks told of each event; and a pipeline run inside a stage."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ddpmkit.app import distributed
from ddpmkit.app.build import BuiltPipeline
from ddpmkit.app.config import validate_nested
from ddpmkit.app.distributed import DistContext
from ddpmkit.app.eval_stage import evaluate
from ddpmkit.app.evaluate import data_batches
from ddpmkit.app.fingerprint import config_hash
from ddpmkit.app.rundir import new_run_directory, write_run_files
from ddpmkit.app.sampling import save_samples, write_samples
from ddpmkit.app.stages import run_stages, stage_directories
from ddpmkit.app.train import Trainer
from ddpmkit.core.checkpoint import list_checkpoints
from ddpmkit.core.hooks import GuardedHooks
from ddpmkit.core.model import DiffusionModel
from ddpmkit.core.runinfo import RunInfo
from ddpmkit.core.wiring import PipelineRun


def run(
    pipeline: BuiltPipeline,
    *,
    resume: Path | None = None,
    progress: bool = True,
    overwrite: bool = False,
    dist: DistContext | None = None,
) -> Path:
    """Run the stages into a fresh run folder (or continue ``resume``; or, with
    ``overwrite``, replace the run folder of this name); returns the folder.

    Under ``torchrun`` (``dist``) rank 0 runs this and the other ranks :func:`run_worker`.
    """
    if dist is not None and not dist.is_main:
        return run_worker(pipeline, resume=resume, dist=dist)
    config = pipeline.config
    directory = resume if resume is not None else new_run_directory(config, overwrite=overwrite)
    distributed.broadcast_object(str(directory), dist)
    resolved = pipeline.resolved_config()
    info = RunInfo(directory=directory, config=resolved, seed=config.seed)
    if resume is None:
        write_run_files(directory, resolved)
    hook = GuardedHooks()
    hook.ddpmkit_run_start(run=info)
    status = "failed"
    try:
        run_steps(pipeline, info, hook, resume=resume, progress=progress, dist=dist)
        status = "completed"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        hook.ddpmkit_run_end(run=info, status=status)
    return directory


def run_steps(
    pipeline: BuiltPipeline,
    info: RunInfo,
    hook: GuardedHooks,
    *,
    resume: Path | None,
    progress: bool,
    dist: DistContext | None,
) -> None:
    """``[stages]``, ``[train]``, ``[sample]`` and ``[eval]`` in turn, into the run folder."""
    config, directory = pipeline.config, info.directory
    if pipeline.stages:
        run_stages(
            pipeline.stages,
            directory,
            model=pipeline.model,
            dataset=pipeline.dataset,
            device=pipeline.device,
            seed=config.seed,
            progress=progress,
            run_pipeline=run_nested,
        )
    attach_stages(pipeline, directory)
    model = pipeline.model
    if config.train is not None:
        model = train(pipeline, info, hook, resume=resume, progress=progress, dist=dist)
    fit_variance(pipeline, model)
    if config.sample is not None:
        path = write_samples(pipeline, model, directory, progress=progress)
        hook.ddpmkit_samples_written(run=info, path=path, count=config.sample.num_samples)
    if config.eval is not None:
        evaluate(pipeline, model, directory, progress=progress)


def train(
    pipeline: BuiltPipeline,
    info: RunInfo,
    hook: GuardedHooks,
    *,
    resume: Path | None,
    progress: bool,
    dist: DistContext | None,
) -> DiffusionModel:
    """The ``[train]`` stage on rank 0; returns the model to sample (EMA unless
    ``sample.use_ema = false``)."""
    trainer = make_trainer(
        pipeline,
        info.directory,
        dist,
        checkpoint_metadata={"config": info.config, "config_hash": config_hash(info.config)},
        on_metrics=lambda step, m: hook.ddpmkit_train_metrics(run=info, step=step, metrics=m),
        on_checkpoint=lambda step, path: hook.ddpmkit_checkpoint_saved(
            run=info, step=step, path=path
        ),
        progress=progress,
    )
    if resume is not None and list_checkpoints(info.directory / "checkpoints"):
        trainer.resume()
    trainer.train()
    sample = pipeline.config.sample
    return trainer.ema_model() if sample is None or sample.use_ema else pipeline.model


def make_trainer(
    pipeline: BuiltPipeline, directory: Path, dist: DistContext | None, **extra: Any
) -> Trainer:
    """The ``[train]`` stage's trainer, checkpointing into ``directory``; ``extra`` are the
    rank-0-only arguments (metadata, hooks, progress)."""
    train_cfg = pipeline.config.train
    assert train_cfg is not None
    return Trainer(
        pipeline.model,
        pipeline.dataset,
        train_cfg,
        seed=pipeline.config.seed,
        checkpoint_dir=directory / "checkpoints",
        weighting=pipeline.weighting,
        objective=pipeline.objective,
        condition_dropout=train_cfg.condition_dropout,
        dist=dist,
        **extra,
    )


def run_worker(pipeline: BuiltPipeline, *, resume: Path | None, dist: DistContext) -> Path:
    """A rank other than 0: train its shard of every batch in step with rank 0, which
    alone writes the run folder, calls the hooks, samples and evaluates."""
    directory = Path(distributed.broadcast_object(None, dist))
    if pipeline.config.train is not None:
        trainer = make_trainer(pipeline, directory, dist, progress=False)
        if resume is not None and list_checkpoints(directory / "checkpoints"):
            trainer.resume()
        trainer.train()
    return directory


def attach_stages(pipeline: BuiltPipeline, directory: Path) -> None:
    """Hand every component the stage folders of the run folder ``directory``."""
    folders = stage_directories(directory, list(pipeline.config.stages))
    for component in pipeline.built.values():
        component.attach(folders)


def fit_variance(pipeline: BuiltPipeline, model: DiffusionModel) -> None:
    """Let the reverse variance estimate what it needs from the training data (Analytic-
    DPM's Gamma_t); a variance with nothing to estimate ignores it."""
    if model.variance is None:
        return
    model.eval()
    batch = pipeline.config.eval.batch_size if pipeline.config.eval else 64
    dataset = pipeline.dataset
    model.variance.fit(model, data_batches(dataset, len(dataset), batch, pipeline.device))


def run_nested(
    data: Mapping[str, Any], *, directory: Path, seed: int, device: torch.device, progress: bool
) -> PipelineRun:
    """Run the pipeline whose tables are ``data`` inside a stage's ``directory`` (the
    :attr:`StageContext.run_pipeline <ddpmkit.StageContext.run_pipeline>` service): with
    ``seed`` and ``device`` unless it names them, under the outer file's ``[plugins]`` policy,
    without hooks; writes ``config.json``, ``checkpoints/``, ``metrics.jsonl`` and
    ``samples.png``."""
    name = "cpu" if device.type == "cpu" else str(device)
    pipeline = BuiltPipeline.build(validate_nested(data, "", seed=seed, device=name), nested=True)
    resolved = pipeline.resolved_config()
    (directory / "config.json").write_text(json.dumps(resolved, indent=2) + "\n")
    model, samples, sample = pipeline.model, None, pipeline.config.sample
    if pipeline.config.train is not None:
        model = train_nested(pipeline, directory, resolved, progress=progress)
    if sample is not None:
        sample_seed = sample.seed if sample.seed is not None else pipeline.config.seed
        samples = pipeline.draw_samples(
            model, sample.num_samples, seed=sample_seed, progress=progress
        )
        save_samples(pipeline, samples.clamp(-1.0, 1.0), directory / "samples.png")
    return PipelineRun(model, samples)


def train_nested(
    pipeline: BuiltPipeline, directory: Path, resolved: dict[str, Any], *, progress: bool
) -> DiffusionModel:
    """Algorithm 1 with the pipeline trainer (warm-up, clipping, EMA, checkpoints), its log
    in ``metrics.jsonl``; returns the model to sample."""
    log = directory / "metrics.jsonl"

    def on_metrics(step: int, metrics: dict[str, Any]) -> None:
        with log.open("a") as file:
            file.write(json.dumps({"step": step, **metrics}) + "\n")

    trainer = make_trainer(
        pipeline,
        directory,
        None,
        checkpoint_metadata={"config": resolved},
        on_metrics=on_metrics,
        progress=progress,
    )
    trainer.train()
    sample = pipeline.config.sample
    return trainer.ema_model() if sample is None or sample.use_ema else pipeline.model
