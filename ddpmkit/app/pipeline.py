"""``ddpmkit run``: the :class:`Pipeline` a pipeline file builds, and what can be done with
it (run it, train, sample, evaluate), and the model of a checkpoint rebuilt.

The work is done by one module each: building and wiring (:mod:`ddpmkit.app.build`), the
checks (:mod:`ddpmkit.app.checks`), running (:mod:`ddpmkit.app.runner`), sampling
(:mod:`ddpmkit.app.sampling`) and the ``[eval]`` stage (:mod:`ddpmkit.app.eval_stage`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ddpmkit.app import runner, sampling
from ddpmkit.app.build import BuiltPipeline, resolve_device
from ddpmkit.app.config import validate_config
from ddpmkit.app.distributed import DistContext
from ddpmkit.app.eval_stage import evaluate
from ddpmkit.app.fingerprint import check_checkpoint_fits
from ddpmkit.app.rundir import (
    latest_run_directory,
    new_run_directory,
    plugin_versions,
    write_run_files,
)
from ddpmkit.app.train import Trainer
from ddpmkit.core.checkpoint import load_checkpoint
from ddpmkit.core.errors import DdpmkitError
from ddpmkit.core.model import DiffusionModel

__all__ = [
    "Pipeline",
    "latest_run_directory",
    "load_model_from_checkpoint",
    "load_weights",
    "new_run_directory",
    "plugin_versions",
    "resolve_device",
    "write_run_files",
]


class Pipeline(BuiltPipeline):
    """The built components of a pipeline file, checked to work together
    (:meth:`~BuiltPipeline.build`), and what a run does with them."""

    def run(
        self,
        *,
        resume: Path | None = None,
        progress: bool = True,
        overwrite: bool = False,
        dist: DistContext | None = None,
    ) -> Path:
        """See :func:`ddpmkit.app.runner.run`."""
        return runner.run(self, resume=resume, progress=progress, overwrite=overwrite, dist=dist)

    def run_worker(self, *, resume: Path | None, dist: DistContext) -> Path:
        """See :func:`ddpmkit.app.runner.run_worker`."""
        return runner.run_worker(self, resume=resume, dist=dist)

    def trainer(self, directory: Path, dist: DistContext | None, **extra: Any) -> Trainer:
        """See :func:`ddpmkit.app.runner.make_trainer`."""
        return runner.make_trainer(self, directory, dist, **extra)

    def attach_stages(self, directory: Path) -> None:
        """See :func:`ddpmkit.app.runner.attach_stages`."""
        runner.attach_stages(self, directory)

    def fit_variance(self, model: DiffusionModel) -> None:
        """See :func:`ddpmkit.app.runner.fit_variance`."""
        runner.fit_variance(self, model)

    def write_samples(self, model: DiffusionModel, directory: Path, *, progress: bool) -> Path:
        """See :func:`ddpmkit.app.sampling.write_samples`."""
        return sampling.write_samples(self, model, directory, progress=progress)

    def evaluate(
        self, model: DiffusionModel, directory: Path, *, progress: bool = True
    ) -> dict[str, Any]:
        """See :func:`ddpmkit.app.eval_stage.evaluate`."""
        return evaluate(self, model, directory, progress=progress)


def load_weights(
    model: DiffusionModel,
    path: Path,
    *,
    use_ema: bool = True,
    config: dict[str, Any] | None = None,
) -> DiffusionModel:
    """Load a checkpoint's EMA (or raw) weights into ``model``; returns it in eval mode.

    With ``config`` (the pipeline's resolved config) a checkpoint of a different model is
    refused with the keys that differ. The reverse variance is not trained (a learned one lives
    in the denoiser's output), so its state is not required to match: one network can be
    evaluated under several variances.
    """
    tensors, meta = load_checkpoint(path)
    if config is not None:
        check_checkpoint_fits(path, meta, config)
    prefix = "ema." if use_ema else "model."
    weights = {
        k[len(prefix) :]: v
        for k, v in tensors.items()
        if k.startswith(prefix) and not k.startswith(f"{prefix}variance.")
    }
    weights.update(
        {f"variance.{k}": v for k, v in model.variance.state_dict().items()}
        if model.variance is not None
        else {}
    )
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise DdpmkitError(f"{path}: the checkpoint does not fit this model: {exc}") from exc
    return model.eval()


def load_model_from_checkpoint(path: Path, *, use_ema: bool = True) -> DiffusionModel:
    """Rebuild the model a checkpoint was trained with and load its (EMA) weights."""
    _, meta = load_checkpoint(path)
    if not isinstance(meta.get("config"), dict):
        raise DdpmkitError(f"{path}: the checkpoint does not record the config it was trained with")
    pipeline = Pipeline.build(validate_config(meta["config"], str(path)))
    return load_weights(pipeline.model, path, use_ema=use_ema, config=pipeline.resolved_config())
