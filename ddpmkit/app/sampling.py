"""The ``[sample]`` stage of a built pipeline: what it samples with (labels, prompts, the
conditioner's default conditions), drawing the samples, and writing them."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from ddpmkit.app.accel import autocast
from ddpmkit.app.evaluate import data_batches
from ddpmkit.core.errors import ConfigError, DdpmkitError
from ddpmkit.core.images import save_grid, save_scatter
from ddpmkit.core.interfaces import Guidance
from ddpmkit.core.model import DiffusionModel
from ddpmkit.core.values import SamplerStep

if TYPE_CHECKING:  # pragma: no cover
    from ddpmkit.app.build import BuiltPipeline


def bound_guidances(pipeline: BuiltPipeline, raw: Any) -> list[Guidance]:
    """Every guidance bound to the raw conditions ``raw`` of one sampler call (its
    :meth:`~ddpmkit.Guidance.for_conditions`); a guidance's refusal names its key."""
    bound = []
    for where, guidance in pipeline.built.items():
        if where.startswith("sample.guidance"):
            try:  # a guidance refuses conditions it cannot read (no labels, say)
                bound.append(guidance.for_conditions(raw))
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}") from exc
    return bound


def condition_readers(pipeline: BuiltPipeline) -> list[Guidance]:
    """The guidances that read raw conditions of their own (classifier guidance: the labels;
    CLIP guidance: the captions), which sampling hands them with
    :meth:`~ddpmkit.Guidance.for_conditions`."""
    probe = pipeline.dataset.batch([0])
    return [g for g in pipeline.guidances if g.raw_from_batch(probe) is not None]


def sample_conditions(pipeline: BuiltPipeline, count: int) -> Any:
    """The raw conditions of ``count`` samples (``None``: unconditional): ``sample.labels``
    or ``sample.prompts`` cycled; else the conditioner's default (every class in turn) or,
    for a conditioner without one (``text``) or a guidance that reads conditions (``clip``),
    those of the data's examples 0 .. count - 1 (their captions)."""
    sample = pipeline.config.sample
    prompts = sample.prompts if sample is not None else None
    if prompts is not None:
        return [prompts[i % len(prompts)] for i in range(count)]
    labels = sample.labels if sample is not None else None
    if labels is None:
        return _default_conditions(pipeline, count)
    if pipeline.model.conditioner is None and not pipeline.condition_readers():
        raise ConfigError(
            "sample.labels needs a [conditioner] or a guidance that reads labels (classifier)"
        )
    classes = pipeline.dataset.num_classes
    bad = [label for label in labels if not 0 <= label < classes]
    if bad or not labels:
        raise ConfigError(f"sample.labels must be non-empty and in 0 .. {classes - 1}")
    return torch.tensor(labels, dtype=torch.long).repeat(math.ceil(count / len(labels)))[:count]


def _default_conditions(pipeline: BuiltPipeline, count: int) -> Any:
    """The conditioner's default conditions, else those read from the data's examples by the
    conditioner or a guidance that reads conditions (``None``: none)."""
    conditioner = pipeline.model.conditioner
    default = conditioner.default_conditions(count) if conditioner is not None else None
    if default is not None:
        return torch.as_tensor(default)
    # what reads conditions from the data (the text conditioner, else CLIP guidance)
    candidates = [conditioner] if conditioner is not None else pipeline.guidances
    if not candidates:
        return None
    dataset = pipeline.dataset
    probe = dataset.batch([0])
    readers = [r for r in candidates if r.raw_from_batch(probe) is not None]
    if not readers:
        return None
    return readers[0].raw_from_batch(dataset.batch([i % len(dataset) for i in range(count)]))


def draw_samples(
    pipeline: BuiltPipeline,
    model: DiffusionModel,
    count: int,
    *,
    seed: int,
    progress: bool = True,
) -> torch.Tensor:
    """``count`` samples from ``model`` with the ``[sample]`` sampler, on the CPU."""
    cfg = pipeline.config.sample
    if cfg is None or pipeline.sampler is None:
        raise DdpmkitError("this pipeline has no [sample] section")
    generator = torch.Generator().manual_seed(seed)
    model.eval()
    raw = pipeline.sample_conditions(count)
    chunks = []
    batches = math.ceil(count / cfg.batch_size)
    for index in range(batches):
        start = index * cfg.batch_size
        n = min(cfg.batch_size, count - start)
        bar = _StepBar(f"sample {index + 1}/{batches}", progress)
        shape = (n, *pipeline.sample_shape)
        cond, guidance = None, pipeline.guidance
        if raw is not None:
            part = raw[start : start + n]
            with torch.no_grad():
                cond = model.encode(part.to(pipeline.device) if torch.is_tensor(part) else part)
            guidance = pipeline.bound_guidances(part) or None
        with autocast(pipeline.device, cfg.precision):
            sample = pipeline.sampler.sample(
                model, shape, cond=cond, generator=generator, callback=bar, guidance=guidance
            )
        chunks.append(sample.float())
        bar.close()
    return torch.cat([c.cpu() for c in chunks])


def save_samples(pipeline: BuiltPipeline, samples: torch.Tensor, path: Path) -> Path:
    """Write ``samples`` as a PNG grid (images) or a scatter over the data (vectors)."""
    cfg = pipeline.config.sample
    assert cfg is not None  # only a pipeline with a [sample] section draws samples
    if len(pipeline.sample_shape) == 3:
        return save_grid(samples, path, nrow=cfg.grid_columns, scale=cfg.grid_scale)
    count = samples.shape[0]
    reference = next(data_batches(pipeline.dataset, count, count, pipeline.device))
    return save_scatter(samples, path, reference=reference.cpu())


def write_samples(
    pipeline: BuiltPipeline, model: DiffusionModel, directory: Path, *, progress: bool
) -> Path:
    """Draw ``sample.num_samples`` samples; write a PNG grid (images) or scatter (vectors)."""
    cfg = pipeline.config.sample
    assert cfg is not None  # run() only calls this with a [sample] section
    seed = cfg.seed if cfg.seed is not None else pipeline.config.seed
    samples = pipeline.draw_samples(model, cfg.num_samples, seed=seed, progress=progress)
    return save_samples(pipeline, samples, directory / "samples.png")


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
