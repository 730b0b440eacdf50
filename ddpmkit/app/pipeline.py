"""``ddpmkit run``: build the components a pipeline names, check them, and run its stages."""

from __future__ import annotations

import json
import math
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

import attrs
import torch
from tqdm.auto import tqdm

from ddpmkit.app import distributed
from ddpmkit.app.accel import autocast
from ddpmkit.app.config import ComponentConfig, PipelineConfig, config_to_dict
from ddpmkit.app.distributed import DistContext
from ddpmkit.app.evaluate import (
    attribute_adherence_by_key,
    attribute_diversity,
    data_batches,
    nll_bits_per_dim,
    swd_to_data,
    write_eval,
)
from ddpmkit.app.fingerprint import check_checkpoint_fits, config_hash
from ddpmkit.app.stages import run_stages, stage_directories
from ddpmkit.app.train import Trainer
from ddpmkit.core import plugin_policy, registry
from ddpmkit.core.checkpoint import list_checkpoints, load_checkpoint
from ddpmkit.core.errors import ConfigError, DdpmkitError
from ddpmkit.core.hooks import GuardedHooks
from ddpmkit.core.images import save_grid, save_scatter
from ddpmkit.core.interfaces import (
    Conditioning,
    Dataset,
    Guidance,
    LossWeighting,
    Sampler,
    SamplerStep,
    Stage,
    TrainingObjective,
)
from ddpmkit.core.model import DiffusionModel
from ddpmkit.core.runinfo import RunInfo
from ddpmkit.tools.plots import plot_vlb_terms


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available, else CPU; an unavailable device is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device = {name!r} but CUDA is not available on this machine")
    device = torch.device(name)
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"device = {name!r}: this machine has {torch.cuda.device_count()} GPUs")
    return device


def _build(kind: str, where: str, section: ComponentConfig, **fill: Any) -> Any:
    """Build a component from its section; ``fill`` supplies params the file left out."""
    try:
        cls = registry.load(kind, section.type)
    except registry.PluginError as exc:  # the plugin failed to import: name the key too
        raise ConfigError(f"{where}.type: {exc}") from exc
    params = dict(section.params)
    for key, value in fill.items():
        if key in cls.Params.model_fields and key not in params:
            params[key] = value() if isinstance(value, _LazyVocabulary) else value
    try:
        validated = registry.validate_params(kind, section.type, params, where=where)
    except registry.PluginError as exc:
        raise ConfigError(f"{where}.type: {exc}") from exc
    try:
        return cls(validated)
    except DdpmkitError:
        raise  # the component's own message (a DataError names the file, say)
    except Exception as exc:  # a plugin bug: name the plugin and where it comes from
        rec = registry.record(kind, section.type)
        raise registry.PluginError(
            f"{where}: {kind} {section.type!r} from distribution {rec.distribution} "
            f"{rec.version} failed to build ({rec.value}): {type(exc).__name__}: {exc}"
        ) from exc


@attrs.frozen
class _LazyVocabulary:
    """A data set's caption vocabulary, read only for a component that takes one."""

    dataset: Dataset

    def __call__(self) -> list[str]:
        return self.dataset.caption_vocabulary()


@attrs.define
class Pipeline:
    """The built components of a pipeline file, checked to work together."""

    config: PipelineConfig
    device: torch.device
    built: dict[str, Any]
    model: DiffusionModel

    @classmethod
    def build(cls, config: PipelineConfig, *, nested: bool = False) -> Pipeline:
        """Build and cross-check every component (no training, no files written).

        ``nested``: a pipeline built inside another's stage keeps the outer file's
        ``[plugins]`` policy instead of setting its own.
        """
        device = resolve_device(config.device)
        if not nested:
            plugin_policy.configure(config.plugins.block, config.plugins.allow)
        for where, kind, section in config.component_sections():
            try:
                registry.record(kind, section.type)
            except registry.PluginError as exc:
                raise ConfigError(f"{where}.type: {exc}") from exc
        torch.manual_seed(config.seed)
        built: dict[str, Any] = {}
        for where, kind, section in config.component_sections():
            fill: dict[str, Any] = {}
            if where == "denoiser":
                channels = built["data"].channels
                multiplier = built["variance"].output_multiplier if "variance" in built else 1
                fill = {"in_channels": channels, "out_channels": channels * multiplier}
                conditioner = built.get("conditioner")
                if conditioner is not None:  # build the denoiser to accept what it produces
                    for key, dim in (
                        ("cond_embed_dim", conditioner.embedding_dim),
                        ("cond_channels", conditioner.extra_channels),
                        ("context_dim", conditioner.context_dim),
                    ):
                        if dim:
                            fill[key] = dim
            if where == "conditioner":  # the data's shape (image) and captions (text)
                data = built["data"]
                fill = {
                    "channels": data.channels,
                    "image_size": data.image_size,
                    "vocabulary": _LazyVocabulary(data),
                }
            built[where] = _build(kind, where, section, **fill)
        model = DiffusionModel(
            built["schedule"],
            built["denoiser"],
            built["parameterization"],
            variance=built.get("variance"),
            conditioner=built.get("conditioner"),
            decoder="discretized" if len(built["data"].shape) == 3 else "gaussian",
        ).to(device)
        pipeline = cls(config, device, built, model)
        pipeline.check_compatible()
        return pipeline

    @property
    def dataset(self) -> Dataset:
        """The training data set."""
        return self.built["data"]

    @property
    def sampler(self) -> Sampler | None:
        """The ``[sample]`` sampler, if any."""
        return self.built.get("sample.sampler")

    @property
    def guidance(self) -> Guidance | list[Guidance] | None:
        """The ``[sample.guidance]`` guidance, as a sampler takes it: one, a list (from
        ``[[sample.guidance]]``, the first innermost) or ``None``."""
        one = self.built.get("sample.guidance")
        return one if one is not None else (self.guidances or None)

    @property
    def guidances(self) -> list[Guidance]:
        """Every ``[sample.guidance]`` guidance, the first innermost (empty: none)."""
        return [g for where, g in self.built.items() if where.startswith("sample.guidance")]

    def bound_guidances(self, raw: Any) -> list[Guidance]:
        """Every guidance bound to the raw conditions ``raw`` of one sampler call (its
        :meth:`~ddpmkit.Guidance.for_conditions`); a guidance's refusal names its key."""
        bound = []
        for where, guidance in self.built.items():
            if where.startswith("sample.guidance"):
                try:  # a guidance refuses conditions it cannot read (no labels, say)
                    bound.append(guidance.for_conditions(raw))
                except ConfigError as exc:
                    raise ConfigError(f"{where}: {exc}") from exc
        return bound

    def condition_readers(self) -> list[Guidance]:
        """The guidances that read raw conditions of their own (classifier guidance: the
        labels; CLIP guidance: the captions), which sampling hands them with
        :meth:`~ddpmkit.Guidance.for_conditions`."""
        probe = self.dataset.batch([0])
        return [g for g in self.guidances if g.raw_from_batch(probe) is not None]

    @property
    def weighting(self) -> LossWeighting | None:
        """The ``[train.weighting]`` loss weighting, if any."""
        return self.built.get("train.weighting")

    @property
    def objective(self) -> TrainingObjective | None:
        """The ``[train.objective]`` training objective, if any."""
        return self.built.get("train.objective")

    @property
    def stages(self) -> dict[str, Stage]:
        """The ``[stages]``, by name, in the order they run."""
        return {name: self.built[f"stages.{name}"] for name in self.config.stages}

    @property
    def eval_dataset(self) -> Dataset:
        """The data set ``[eval]`` measures (the training data unless it names another)."""
        return self.built.get("eval.data", self.dataset)

    def resolved_config(self) -> dict[str, Any]:
        """The config as plain data, each component section with every parameter it used."""
        data = config_to_dict(self.config)
        for where, component in self.built.items():
            *parents, leaf = where.split(".")
            section = data
            for part in parents:  # sample.guidance.1: the second table of [[sample.guidance]]
                section = section[int(part)] if isinstance(section, list) else section[part]
            key: Any = int(leaf) if isinstance(section, list) else leaf
            params = component.params.model_dump(mode="json", exclude_none=True)
            section[key] = {"type": section[key]["type"], **params}
        return data

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one example: ``(C, H, W)`` for images, ``(D,)`` for vector data."""
        return self.dataset.shape

    def check_compatible(self) -> None:
        """Components that cannot work together fail here, before any work is done."""
        denoiser = self.model.denoiser
        self.check_stages()
        if denoiser.in_channels != self.dataset.channels:
            raise ConfigError(
                f"denoiser.in_channels = {denoiser.in_channels} but data {self.config.data.type!r}"
                f" has {self.dataset.channels} channels"
            )
        if len(self.dataset) == 0:
            raise ConfigError(f"data: data set {self.config.data.type!r} is empty")
        if self.sampler is not None:
            try:
                self.sampler.check(self.model)
            except ConfigError as exc:
                raise ConfigError(f"sample.sampler: {exc}") from exc
        for where, guidance in self.built.items():
            if not where.startswith("sample.guidance"):
                continue
            try:
                guidance.check(self.model)
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}") from exc
        eval_cfg = self.config.eval
        train, variance_cfg = self.config.train, self.config.variance
        if train is not None and self.model.variance is not None:
            learned = self.model.variance.output_multiplier > 1
            if learned and train.vlb_weight == 0:
                raise ConfigError(
                    f"variance {variance_cfg.type if variance_cfg else ''!r} is learned from "
                    "the VLB term: set train.vlb_weight > 0 (0.001 in Nichol & Dhariwal)"
                )
        conditioner = self.model.conditioner
        if conditioner is not None:
            classes = getattr(conditioner.params, "num_classes", None)
            if classes is not None and self.dataset.num_classes != classes:
                raise ConfigError(
                    f"conditioner.num_classes = {classes} but data {self.config.data.type!r} "
                    f"has {self.dataset.num_classes} classes"
                )
            try:
                self.model.denoiser(
                    torch.zeros(1, *self.dataset.shape, device=self.device),
                    torch.zeros(1, dtype=torch.long, device=self.device),
                    self.probe_condition(1),
                )
            except (ValueError, RuntimeError) as exc:
                raise ConfigError(
                    f"denoiser {self.config.denoiser.type!r} cannot take what conditioner "
                    f"{self.config.conditioner.type!r} produces: {exc}"  # type: ignore[union-attr]
                ) from exc
        if self.config.sample is not None and self.config.sample.labels is not None:
            if conditioner is None and not self.condition_readers():
                raise ConfigError(
                    "sample.labels needs a [conditioner] or a guidance that reads labels "
                    "(classifier)"
                )
            self.sample_conditions(1)
        elif (
            self.config.sample is not None
            and conditioner is not None
            and not any(getattr(conditioner.params, key) for key in conditioner.stage_params)
        ):
            self.sample_conditions(1)  # the conditioner can say what to sample with
        if self.config.sample is not None and self.config.sample.prompts is not None:
            if conditioner is None and not self.condition_readers():
                raise ConfigError(
                    "sample.prompts needs a [conditioner] (text) or a guidance that reads "
                    "prompts (clip)"
                )
            try:
                with torch.no_grad():
                    self.model.encode(self.sample_conditions(1))
            except (ValueError, TypeError) as exc:
                raise ConfigError(
                    f"sample.prompts: conditioner {self.config.conditioner.type!r} "  # type: ignore[union-attr]
                    f"does not take text: {exc}"
                ) from exc
        if eval_cfg is not None and eval_cfg.attributes:
            if self.sampler is None:
                raise ConfigError("eval.attributes = true needs a [sample] section")
            probe = torch.zeros(1, *self.eval_dataset.shape)
            if self.eval_dataset.read_attributes(probe) is None:
                raise ConfigError(
                    f"eval.attributes: data {(eval_cfg.data or self.config.data).type!r} "
                    "has no reader of generated images (the shapes data has one)"
                )
        if eval_cfg is not None and eval_cfg.swd and self.sampler is None:
            raise ConfigError("eval.swd = true needs a [sample] section to draw the samples")
        if self.config.train is not None and not any(
            p.requires_grad for p in self.model.parameters()
        ):
            raise ConfigError(
                f"train: denoiser {self.config.denoiser.type!r} has no trainable parameters; "
                "remove [train] to sample from or evaluate it as it is"
            )
        if self.model.schedule.trains_on_bound and train is not None:
            for key, used in (
                ("weighting", self.weighting is not None),
                ("vlb_weight", train.vlb_weight > 0),
            ):
                if used:
                    raise ConfigError(
                        f"train.{key}: schedule {self.config.schedule.type!r} is learned on the "
                        "variational bound itself (Kingma et al. 2021); remove this key"
                    )
        if self.objective is not None and self.model.conditioner is not None:
            raise ConfigError(
                "train.objective: the objective trains without conditions; remove [conditioner]"
            )
        if self.objective is not None and train is not None:
            for key, used in (
                ("weighting", self.weighting is not None),
                ("vlb_weight", train.vlb_weight > 0),
            ):
                if used:
                    raise ConfigError(
                        f"train.{key}: train.objective {train.objective.type!r} "  # type: ignore[union-attr]
                        "replaces the diffusion loss; remove this key"
                    )
            try:
                self.objective.check(self.model)
            except ConfigError as exc:
                raise ConfigError(f"train.objective: {exc}") from exc
        if self.weighting is not None:
            try:
                self.weighting.check(self.model)
            except ConfigError as exc:
                raise ConfigError(f"train.weighting: {exc}") from exc
        variance = self.model.variance
        wanted = self.dataset.channels * (variance.output_multiplier if variance else 1)
        if denoiser.out_channels != wanted:
            raise ConfigError(
                f"denoiser.out_channels = {denoiser.out_channels} but the data's "
                f"{self.dataset.channels} channels with variance "
                f"{self.config.variance.type if self.config.variance else 'fixed-large'!r} "
                f"need {wanted}"
            )
        # one tiny forward pass catches every shape mismatch the denoiser knows of
        probe = torch.zeros((1, *self.sample_shape), device=self.device)
        # a channel-conditioned network always needs its channels: give it the null condition
        null = conditioner.null(1, self.device) if conditioner is not None else None
        try:
            with torch.no_grad():
                denoiser(probe, torch.zeros(1, dtype=torch.long, device=self.device), null)
        except (ValueError, RuntimeError) as exc:
            raise ConfigError(
                f"denoiser {self.config.denoiser.type!r} cannot take data of shape "
                f"{tuple(self.sample_shape)}: {exc}"
            ) from exc

    def check_stages(self) -> None:
        """Each stage can run on this model and data, and every stage a component names by a
        param in its ``stage_params`` is a ``[stages.<name>]`` table of this file."""
        for name, stage in self.stages.items():
            try:
                stage.check(self.model, self.dataset)
            except ConfigError as exc:
                raise ConfigError(f"stages.{name}: {exc}") from exc
        for where, component in self.built.items():
            for key in component.stage_params:
                wanted = getattr(component.params, key)
                if wanted is not None and wanted not in self.config.stages:
                    known = ", ".join(self.config.stages) or "none"
                    raise ConfigError(
                        f"{where}.{key} = {wanted!r} names no [stages.{wanted}] table "
                        f"(this file's stages: {known})"
                    )

    def attach_stages(self, directory: Path) -> None:
        """Hand every component the stage folders of the run folder ``directory``."""
        folders = stage_directories(directory, list(self.config.stages))
        for component in self.built.values():
            component.attach(folders)

    # -- running -----------------------------------------------------------------------------

    def run(
        self,
        *,
        resume: Path | None = None,
        progress: bool = True,
        overwrite: bool = False,
        dist: DistContext | None = None,
    ) -> Path:
        """Run the stages into a fresh run folder (or continue ``resume``; or, with
        ``overwrite``, replace the run folder of this name); returns the folder.

        Under ``torchrun`` (``dist``) rank 0 runs this and the other ranks :meth:`run_worker`.
        """
        if dist is not None and not dist.is_main:
            return self.run_worker(resume=resume, dist=dist)
        directory = (
            resume if resume is not None else new_run_directory(self.config, overwrite=overwrite)
        )
        distributed.broadcast_object(str(directory), dist)
        resolved = self.resolved_config()
        info = RunInfo(directory=directory, config=resolved, seed=self.config.seed)
        if resume is None:
            write_run_files(directory, resolved)
        hook = GuardedHooks()
        hook.ddpmkit_run_start(run=info)
        status = "failed"
        try:
            model = self.model
            if self.stages:
                run_stages(
                    self.stages,
                    directory,
                    model=self.model,
                    dataset=self.dataset,
                    device=self.device,
                    seed=self.config.seed,
                    progress=progress,
                )
            self.attach_stages(directory)
            if self.config.train is not None:
                trainer = self.trainer(
                    directory,
                    dist,
                    checkpoint_metadata={"config": resolved, "config_hash": config_hash(resolved)},
                    on_metrics=lambda step, m: hook.ddpmkit_train_metrics(
                        run=info, step=step, metrics=m
                    ),
                    on_checkpoint=lambda step, path: hook.ddpmkit_checkpoint_saved(
                        run=info, step=step, path=path
                    ),
                    progress=progress,
                )
                if resume is not None and list_checkpoints(directory / "checkpoints"):
                    trainer.resume()
                trainer.train()
                use_ema = self.config.sample is None or self.config.sample.use_ema
                model = trainer.ema_model() if use_ema else self.model
            self.fit_variance(model)
            if self.config.sample is not None:
                path = self.write_samples(model, directory, progress=progress)
                hook.ddpmkit_samples_written(
                    run=info, path=path, count=self.config.sample.num_samples
                )
            if self.config.eval is not None:
                self.evaluate(model, directory, progress=progress)
            status = "completed"
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            hook.ddpmkit_run_end(run=info, status=status)
        return directory

    def trainer(self, directory: Path, dist: DistContext | None, **extra: Any) -> Trainer:
        """The ``[train]`` stage's trainer, checkpointing into ``directory``; ``extra`` are
        the rank-0-only arguments (metadata, hooks, progress)."""
        train = self.config.train
        assert train is not None
        return Trainer(
            self.model,
            self.dataset,
            train,
            seed=self.config.seed,
            checkpoint_dir=directory / "checkpoints",
            weighting=self.weighting,
            objective=self.objective,
            condition_dropout=train.condition_dropout,
            dist=dist,
            **extra,
        )

    def run_worker(self, *, resume: Path | None, dist: DistContext) -> Path:
        """A rank other than 0: train its shard of every batch in step with rank 0, which
        alone writes the run folder, calls the hooks, samples and evaluates."""
        directory = Path(distributed.broadcast_object(None, dist))
        if self.config.train is not None:
            trainer = self.trainer(directory, dist, progress=False)
            if resume is not None and list_checkpoints(directory / "checkpoints"):
                trainer.resume()
            trainer.train()
        return directory

    def fit_variance(self, model: DiffusionModel) -> None:
        """Let the reverse variance estimate what it needs from the training data (Analytic-
        DPM's Gamma_t); a variance with nothing to estimate ignores it."""
        if model.variance is None:
            return
        model.eval()
        batch = self.config.eval.batch_size if self.config.eval else 64
        model.variance.fit(model, data_batches(self.dataset, len(self.dataset), batch, self.device))

    def draw_samples(
        self, model: DiffusionModel, count: int, *, seed: int, progress: bool = True
    ) -> torch.Tensor:
        """``count`` samples from ``model`` with the ``[sample]`` sampler, on the CPU."""
        cfg = self.config.sample
        if cfg is None or self.sampler is None:
            raise DdpmkitError("this pipeline has no [sample] section")
        generator = torch.Generator().manual_seed(seed)
        model.eval()
        raw = self.sample_conditions(count)
        chunks = []
        batches = math.ceil(count / cfg.batch_size)
        for index in range(batches):
            start = index * cfg.batch_size
            n = min(cfg.batch_size, count - start)
            bar = _StepBar(f"sample {index + 1}/{batches}", progress)
            shape = (n, *self.sample_shape)
            cond, guidance = None, self.guidance
            if raw is not None:
                part = raw[start : start + n]
                with torch.no_grad():
                    cond = model.encode(part.to(self.device) if torch.is_tensor(part) else part)
                guidance = self.bound_guidances(part) or None
            with autocast(self.device, cfg.precision):
                sample = self.sampler.sample(
                    model,
                    shape,
                    cond=cond,
                    generator=generator,
                    callback=bar,
                    guidance=guidance,
                )
            chunks.append(sample.float())
            bar.close()
        return torch.cat([c.cpu() for c in chunks])

    def sample_conditions(self, count: int) -> Any:
        """The raw conditions of ``count`` samples (``None``: unconditional): ``sample.labels``
        or ``sample.prompts`` cycled; else the conditioner's default (every class in turn) or,
        for a conditioner without one (``text``) or a guidance that reads conditions (``clip``),
        those of the data's examples 0 .. count - 1 (their captions)."""
        conditioner = self.model.conditioner
        sample = self.config.sample
        prompts = sample.prompts if sample is not None else None
        if prompts is not None:
            return [prompts[i % len(prompts)] for i in range(count)]
        labels = sample.labels if sample is not None else None
        if labels is None:
            default = conditioner.default_conditions(count) if conditioner is not None else None
            if default is not None:
                return torch.as_tensor(default)
            # what reads conditions from the data (the text conditioner, else CLIP guidance)
            candidates = [conditioner] if conditioner is not None else self.guidances
            if not candidates:
                return None
            probe = self.dataset.batch([0])
            readers = [r for r in candidates if r.raw_from_batch(probe) is not None]
            if not readers:
                return None
            return readers[0].raw_from_batch(
                self.dataset.batch([i % len(self.dataset) for i in range(count)])
            )
        if conditioner is None and not self.condition_readers():
            raise ConfigError(
                "sample.labels needs a [conditioner] or a guidance that reads labels (classifier)"
            )
        classes = self.dataset.num_classes
        bad = [label for label in labels if not 0 <= label < classes]
        if bad or not labels:
            raise ConfigError(f"sample.labels must be non-empty and in 0 .. {classes - 1}")
        return torch.tensor(labels, dtype=torch.long).repeat(math.ceil(count / len(labels)))[:count]

    def probe_condition(self, count: int) -> Conditioning:
        """The conditioner's encoding of a training batch's first ``count`` examples."""
        conditioner = self.model.conditioner
        assert conditioner is not None
        with torch.no_grad():
            batch = self.dataset.batch(list(range(count)))
            return self.model.encode(conditioner.raw_from_batch(batch))  # type: ignore[return-value]

    def write_samples(self, model: DiffusionModel, directory: Path, *, progress: bool) -> Path:
        """Draw ``sample.num_samples`` samples; write a PNG grid (images) or scatter (vectors)."""
        cfg = self.config.sample
        assert cfg is not None  # run() only calls this with a [sample] section
        seed = cfg.seed if cfg.seed is not None else self.config.seed
        samples = self.draw_samples(model, cfg.num_samples, seed=seed, progress=progress)
        if len(self.sample_shape) == 3:
            path = directory / "samples.png"
            return save_grid(samples, path, nrow=cfg.grid_columns, scale=cfg.grid_scale)
        reference = next(data_batches(self.dataset, cfg.num_samples, cfg.num_samples, self.device))
        return save_scatter(samples, directory / "samples.png", reference=reference.cpu())

    def evaluate(
        self, model: DiffusionModel, directory: Path, *, progress: bool = True
    ) -> dict[str, Any]:
        """The ``[eval]`` stage: ``eval.json`` and, with ``nll``, ``vlb_terms.png``."""
        cfg = self.config.eval
        if cfg is None:
            raise DdpmkitError("this pipeline has no [eval] section")
        seed = cfg.seed if cfg.seed is not None else self.config.seed
        results: dict[str, Any] = {}
        if cfg.nll:
            batches = list(
                data_batches(self.eval_dataset, cfg.num_examples, cfg.batch_size, self.device)
            )
            results["num_examples"] = sum(b.shape[0] for b in batches)
            generator = torch.Generator().manual_seed(seed)
            nll = nll_bits_per_dim(model, batches, generator=generator, progress=progress)
            results.update(
                nll_bits_per_dim=nll.bits_per_dim,
                nll_standard_error=nll.standard_error,
                prior_bits_per_dim=nll.prior,
                terms_bits_per_dim=nll.per_term.tolist(),
            )
            plot_vlb_terms(
                nll.per_term.tolist(), nll.prior, nll.bits_per_dim, directory / "vlb_terms.png"
            )
        if cfg.swd:
            samples = self.draw_samples(model, cfg.swd_samples, seed=seed, progress=progress)
            data = torch.cat(
                list(data_batches(self.eval_dataset, cfg.swd_samples, cfg.batch_size, self.device))
            ).cpu()
            generator = torch.Generator().manual_seed(seed)
            results["swd"] = swd_to_data(samples, data, cfg.swd_projections, generator)
        if cfg.attributes:
            samples = self.draw_samples(model, cfg.attributes_samples, seed=seed, progress=progress)
            readings = self.eval_dataset.read_attributes(samples)
            if readings is None:  # check_compatible refuses this; a data set may still change
                raise ConfigError("eval.attributes: the data set cannot read images back")
            results["attributes"] = attribute_diversity(readings)
            raw = self.sample_conditions(cfg.attributes_samples)
            # labels or captions: their attributes are the asked ones (not images)
            if raw is not None and not (torch.is_tensor(raw) and raw.ndim > 1):
                asked = self.eval_dataset
                wanted = [
                    asked.caption_attributes(c)
                    if isinstance(c, str)
                    else asked.label_attributes(int(c))
                    for c in raw
                ]
                if all(w is not None for w in wanted):
                    results["attributes"].update(
                        attribute_adherence_by_key(readings, wanted)  # type: ignore[arg-type]
                    )
        write_eval(directory, results)
        if progress:
            summary = {k: v for k, v in results.items() if k != "terms_bits_per_dim"}
            print("eval:", json.dumps(summary))
        return results


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


def new_run_directory(config: PipelineConfig, *, overwrite: bool = False) -> Path:
    """``output.dir/output.name``, or ``name-2``, ``name-3``... so no run is overwritten.

    With ``overwrite`` (asked for by ``ddpmkit run --overwrite``) an existing run folder of that
    name is deleted and reused; a folder that is not a run folder (no ``config.json``) never is.
    """
    parent = Path(config.output.dir)
    name = config.output.name or "run"
    candidate, n = parent / name, 1
    if overwrite and candidate.exists():
        if not (candidate / "config.json").is_file():
            raise ConfigError(
                f"--overwrite: {candidate} is not a ddpmkit run folder (it has no config.json); "
                "refusing to delete it"
            )
        shutil.rmtree(candidate)
    while candidate.exists():
        n += 1
        candidate = parent / f"{name}-{n}"
    try:
        candidate.mkdir(parents=True)
    except OSError as exc:
        raise ConfigError(f"output.dir: cannot create {candidate}: {exc.strerror}") from exc
    return candidate


def latest_run_directory(config: PipelineConfig) -> Path:
    """The most recent run folder of this pipeline's name (for ``--resume``)."""
    parent = Path(config.output.dir)
    name = config.output.name or "run"
    numbers = {}
    for path in parent.glob(f"{name}*"):
        suffix = path.name[len(name) :]
        if path.is_dir() and suffix == "":
            numbers[1] = path
        elif path.is_dir() and suffix.startswith("-") and suffix[1:].isdigit():
            numbers[int(suffix[1:])] = path
    if not numbers:
        raise DdpmkitError(f"no run folder named {name!r} under {parent}")
    return numbers[max(numbers)]


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
    from ddpmkit.app.config import validate_config

    _, meta = load_checkpoint(path)
    if not isinstance(meta.get("config"), dict):
        raise DdpmkitError(f"{path}: the checkpoint does not record the config it was trained with")
    pipeline = Pipeline.build(validate_config(meta["config"], str(path)))
    return load_weights(pipeline.model, path, use_ema=use_ema, config=pipeline.resolved_config())
