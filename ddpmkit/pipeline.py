"""``ddpmkit run``: build the components a pipeline names, check them, and run its stages."""

from __future__ import annotations

import json
import math
import platform
import sys
from pathlib import Path
from typing import Any

import attrs
import torch
from tqdm.auto import tqdm

from ddpmkit import registry
from ddpmkit.checkpoint import load_checkpoint
from ddpmkit.config import ComponentConfig, PipelineConfig, config_to_dict
from ddpmkit.errors import ConfigError, DdpmkitError
from ddpmkit.hooks import plugin_manager
from ddpmkit.images import save_grid
from ddpmkit.interfaces import Component, Dataset, Sampler, SamplerStep
from ddpmkit.model import DiffusionModel
from ddpmkit.runinfo import RunInfo
from ddpmkit.train import Trainer


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU; an unavailable device is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device = {name!r} but CUDA is not available on this machine")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device = 'mps' but MPS is not available on this machine")
    return torch.device(name)


def _build(kind: str, where: str, section: ComponentConfig, **fill: Any) -> Any:
    """Build a component from its section; ``fill`` supplies params the file left out."""
    cls = registry.load(kind, section.type)
    params = dict(section.params)
    for key, value in fill.items():
        if key in cls.Params.model_fields and key not in params:
            params[key] = value
    try:
        validated = registry.validate_params(kind, section.type, params, where=where)
    except registry.PluginError as exc:
        raise ConfigError(f"{where}.type: {exc}") from exc
    return cls(validated)


@attrs.define
class Pipeline:
    """The built components of a pipeline file, checked to work together."""

    config: PipelineConfig
    device: torch.device
    dataset: Dataset
    model: DiffusionModel
    sampler: Sampler | None

    @classmethod
    def build(cls, config: PipelineConfig) -> Pipeline:
        """Build and cross-check every component (no training, no files written)."""
        device = resolve_device(config.device)
        for where, kind, section in config.component_sections():
            try:
                registry.record(kind, section.type)
            except registry.PluginError as exc:
                raise ConfigError(f"{where}.type: {exc}") from exc
        torch.manual_seed(config.seed)
        dataset: Dataset = _build("dataset", "data", config.data)
        schedule = _build("schedule", "schedule", config.schedule)
        parameterization = _build("parameterization", "parameterization", config.parameterization)
        denoiser = _build(
            "denoiser",
            "denoiser",
            config.denoiser,
            in_channels=dataset.channels,
            out_channels=dataset.channels,
        )
        sampler = None
        if config.sample is not None:
            sampler = _build("sampler", "sample.sampler", config.sample.sampler)
        model = DiffusionModel(schedule, denoiser, parameterization).to(device)
        pipeline = cls(config, device, dataset, model, sampler)
        pipeline.check_compatible()
        return pipeline

    def components(self) -> dict[str, Component]:
        """Each built component by the key path of its section."""
        found: dict[str, Component] = {
            "data": self.dataset,
            "schedule": self.model.schedule,
            "parameterization": self.model.parameterization,
            "denoiser": self.model.denoiser,
        }
        if self.sampler is not None:
            found["sample.sampler"] = self.sampler
        return found

    def resolved_config(self) -> dict[str, Any]:
        """The config as plain data, each component section with every parameter it used."""
        data = config_to_dict(self.config)
        for where, component in self.components().items():
            *parents, leaf = where.split(".")
            section = data
            for part in parents:
                section = section[part]
            params = component.params.model_dump(mode="json", exclude_none=True)
            section[leaf] = {"type": section[leaf]["type"], **params}
        return data

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one example: ``(C, H, W)`` for images, ``(D,)`` for vector data."""
        return self.dataset.shape

    def check_compatible(self) -> None:
        """Components that cannot work together fail here, before any work is done."""
        denoiser = self.model.denoiser
        if denoiser.in_channels != self.dataset.channels:
            raise ConfigError(
                f"denoiser.in_channels = {denoiser.in_channels} but data {self.config.data.type!r}"
                f" has {self.dataset.channels} channels"
            )
        if denoiser.out_channels < self.dataset.channels:
            raise ConfigError(
                f"denoiser.out_channels = {denoiser.out_channels} is fewer than the data's "
                f"{self.dataset.channels} channels"
            )
        if len(self.dataset) == 0:
            raise ConfigError(f"data: data set {self.config.data.type!r} is empty")
        if self.sampler is not None:
            try:
                self.sampler.check(self.model)
            except ConfigError as exc:
                raise ConfigError(f"sample.sampler: {exc}") from exc
        # one tiny forward pass catches every shape mismatch the denoiser knows of
        probe = torch.zeros((1, *self.sample_shape), device=self.device)
        try:
            with torch.no_grad():
                denoiser(probe, torch.zeros(1, dtype=torch.long, device=self.device), None)
        except (ValueError, RuntimeError) as exc:
            raise ConfigError(
                f"denoiser {self.config.denoiser.type!r} cannot take data of shape "
                f"{tuple(self.sample_shape)}: {exc}"
            ) from exc

    # -- running -----------------------------------------------------------------------------

    def run(self, *, resume: Path | None = None, progress: bool = True) -> Path:
        """Run the stages into a fresh run folder (or continue ``resume``); returns the folder."""
        directory = resume if resume is not None else new_run_directory(self.config)
        resolved = self.resolved_config()
        info = RunInfo(directory=directory, config=resolved, seed=self.config.seed)
        if resume is None:
            write_run_files(directory, resolved)
        hook = plugin_manager().hook
        hook.ddpmkit_run_start(run=info)
        status = "failed"
        try:
            sampling_model = self.model
            if self.config.train is not None:
                trainer = Trainer(
                    self.model,
                    self.dataset,
                    self.config.train,
                    seed=self.config.seed,
                    checkpoint_dir=directory / "checkpoints",
                    checkpoint_metadata={"config": resolved},
                    on_metrics=lambda step, m: hook.ddpmkit_train_metrics(
                        run=info, step=step, metrics=m
                    ),
                    on_checkpoint=lambda step, path: hook.ddpmkit_checkpoint_saved(
                        run=info, step=step, path=path
                    ),
                    progress=progress,
                )
                if resume is not None:
                    trainer.resume()
                trainer.train()
                use_ema = self.config.sample is None or self.config.sample.use_ema
                sampling_model = trainer.ema_model() if use_ema else self.model
            if self.config.sample is not None:
                path = self.sample(sampling_model, directory / "samples.png", progress=progress)
                hook.ddpmkit_samples_written(
                    run=info, path=path, count=self.config.sample.num_samples
                )
            status = "completed"
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            hook.ddpmkit_run_end(run=info, status=status)
        return directory

    def sample(self, model: DiffusionModel, path: Path, *, progress: bool = True) -> Path:
        """Draw ``sample.num_samples`` samples and write them as a PNG grid at ``path``."""
        cfg = self.config.sample
        if cfg is None or self.sampler is None:
            raise DdpmkitError("this pipeline has no [sample] section")
        seed = cfg.seed if cfg.seed is not None else self.config.seed
        generator = torch.Generator().manual_seed(seed)
        model.eval()
        chunks = []
        remaining = cfg.num_samples
        batches = math.ceil(cfg.num_samples / cfg.batch_size)
        for index in range(batches):
            n = min(cfg.batch_size, remaining)
            bar = _StepBar(f"sample {index + 1}/{batches}", progress)
            chunks.append(
                self.sampler.sample(
                    model, (n, *self.sample_shape), generator=generator, callback=bar
                ).cpu()
            )
            bar.close()
            remaining -= n
        return save_grid(torch.cat(chunks), path, nrow=cfg.grid_columns, scale=cfg.grid_scale)


class _StepBar:
    """A sampler callback that shows a progress bar over the sampler's steps."""

    def __init__(self, desc: str, enabled: bool) -> None:
        self.desc = desc
        self.enabled = enabled
        self.bar: Any = None

    def __call__(self, step: SamplerStep) -> None:
        if self.bar is None:
            self.bar = tqdm(total=step.total, desc=self.desc, unit="step", disable=not self.enabled)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def new_run_directory(config: PipelineConfig) -> Path:
    """``output.dir/output.name``, or ``name-2``, ``name-3``... so no run is overwritten."""
    parent = Path(config.output.dir)
    name = config.output.name or "run"
    candidate, n = parent / name, 1
    while candidate.exists():
        n += 1
        candidate = parent / f"{name}-{n}"
    candidate.mkdir(parents=True)
    return candidate


def latest_run_directory(config: PipelineConfig) -> Path:
    """The most recent run folder of this pipeline's name (for ``--resume``)."""
    parent = Path(config.output.dir)
    name = config.output.name or "run"
    runs = [p for p in parent.glob(f"{name}*") if p.is_dir() and _is_run_of(p.name, name)]
    if not runs:
        raise DdpmkitError(f"--resume: no run folder named {name!r} under {parent}")
    return max(runs, key=lambda p: p.stat().st_mtime)


def _is_run_of(folder: str, name: str) -> bool:
    suffix = folder[len(name) :]
    return suffix == "" or (suffix.startswith("-") and suffix[1:].isdigit())


def write_run_files(directory: Path, resolved: dict[str, Any]) -> None:
    """The resolved config and the versions of everything that produced the run."""
    (directory / "config.json").write_text(json.dumps(resolved, indent=2) + "\n")
    versions = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "argv": sys.argv,
        "plugins": plugin_versions(),
    }
    (directory / "versions.json").write_text(json.dumps(versions, indent=2) + "\n")


def plugin_versions() -> dict[str, str]:
    """``distribution -> version`` of every distribution that registers a component."""
    found: dict[str, str] = {}
    for kind in registry.KIND_GROUPS:
        for rec in registry.records(kind):
            found[rec.distribution] = rec.version
    return dict(sorted(found.items()))


def load_model_from_checkpoint(path: Path, *, use_ema: bool = True) -> DiffusionModel:
    """Rebuild the model a checkpoint was trained with and load its (EMA) weights."""
    from ddpmkit.config import validate_config

    tensors, meta = load_checkpoint(path)
    config = validate_config(meta["config"], str(path))
    pipeline = Pipeline.build(config)
    prefix = "ema." if use_ema else "model."
    weights = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    pipeline.model.load_state_dict(weights)
    return pipeline.model.eval()
