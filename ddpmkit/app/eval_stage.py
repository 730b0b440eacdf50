"""The ``[eval]`` stage of a built pipeline: NLL in bits/dim with its VLB terms, the sliced
Wasserstein distance of samples to the data, and the attributes read back from samples, into
``eval.json`` (and ``vlb_terms.png``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ddpmkit.app.evaluate import (
    attribute_reader,
    data_batches,
    nll_bits_per_dim,
    swd_to_data,
    write_eval,
)
from ddpmkit.app.evaluate import attribute_results as attribute_results_of
from ddpmkit.core.errors import ConfigError, DdpmkitError
from ddpmkit.core.model import DiffusionModel
from ddpmkit.tools.plots import plot_vlb_terms

if TYPE_CHECKING:  # pragma: no cover
    from ddpmkit.app.build import BuiltPipeline


def evaluate(
    pipeline: BuiltPipeline, model: DiffusionModel, directory: Path, *, progress: bool = True
) -> dict[str, Any]:
    """The ``[eval]`` stage: ``eval.json`` and, with ``nll``, ``vlb_terms.png``."""
    cfg = pipeline.config.eval
    if cfg is None:
        raise DdpmkitError("this pipeline has no [eval] section")
    seed = cfg.seed if cfg.seed is not None else pipeline.config.seed
    results: dict[str, Any] = {}
    if cfg.nll:
        results.update(nll_results(pipeline, model, directory, seed=seed, progress=progress))
    if cfg.swd:
        samples = pipeline.draw_samples(model, cfg.swd_samples, seed=seed, progress=progress)
        data = torch.cat(
            list(
                data_batches(
                    pipeline.eval_dataset, cfg.swd_samples, cfg.batch_size, pipeline.device
                )
            )
        ).cpu()
        generator = torch.Generator().manual_seed(seed)
        results["swd"] = swd_to_data(samples, data, cfg.swd_projections, generator)
    if cfg.attributes:
        results["attributes"] = attribute_results(pipeline, model, seed=seed, progress=progress)
    write_eval(directory, results)
    if progress:
        summary = {k: v for k, v in results.items() if k != "terms_bits_per_dim"}
        print("eval:", json.dumps(summary))
    return results


def nll_results(
    pipeline: BuiltPipeline, model: DiffusionModel, directory: Path, *, seed: int, progress: bool
) -> dict[str, Any]:
    """NLL in bits/dim over ``eval.num_examples`` examples, every VLB term; plots the terms."""
    cfg = pipeline.config.eval
    assert cfg is not None
    batches = list(
        data_batches(pipeline.eval_dataset, cfg.num_examples, cfg.batch_size, pipeline.device)
    )
    generator = torch.Generator().manual_seed(seed)
    nll = nll_bits_per_dim(model, batches, generator=generator, progress=progress)
    plot_vlb_terms(nll.per_term.tolist(), nll.prior, nll.bits_per_dim, directory / "vlb_terms.png")
    return {
        "num_examples": sum(b.shape[0] for b in batches),
        "nll_bits_per_dim": nll.bits_per_dim,
        "nll_standard_error": nll.standard_error,
        "prior_bits_per_dim": nll.prior,
        "terms_bits_per_dim": nll.per_term.tolist(),
    }


def attribute_results(
    pipeline: BuiltPipeline, model: DiffusionModel, *, seed: int, progress: bool
) -> dict[str, Any]:
    """The attributes of ``eval.attributes_samples`` samples read back: how diverse, and how
    well they match the labels or captions asked for (when those have readable meaning)."""
    cfg = pipeline.config.eval
    assert cfg is not None
    samples = pipeline.draw_samples(model, cfg.attributes_samples, seed=seed, progress=progress)
    cfg_data = (cfg.data or pipeline.config.data).type
    reader = attribute_reader(cfg_data, pipeline.eval_dataset)
    if reader is None:  # the checks refuse this; a registry may still change
        raise ConfigError("eval.attributes: the data set has no attribute reader")
    raw = pipeline.sample_conditions(cfg.attributes_samples)
    return attribute_results_of(reader, samples, raw)
