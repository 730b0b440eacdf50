"""The ``[eval]`` stage: NLL in bits/dim from every term of the variational bound, the SWD, and
what a data set's attribute reader reads back from samples (diversity, adherence)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from tqdm.auto import tqdm

from ddpmkit.app.metrics import sliced_wasserstein
from ddpmkit.core import registry
from ddpmkit.core.data import AttributeReader, Dataset
from ddpmkit.core.model import DiffusionModel


def data_batches(
    dataset: Dataset, num_examples: int, batch_size: int, device: torch.device
) -> Iterator[torch.Tensor]:
    """Examples ``0 .. num_examples - 1`` of ``dataset`` in batches, on ``device``."""
    count = min(num_examples, len(dataset))
    for start in range(0, count, batch_size):
        indices = list(range(start, min(count, start + batch_size)))
        yield dataset.batch(indices).images.to(device)


@attrs.frozen
class NLLResult:
    """The bound per example and per term, in bits per dimension."""

    per_example: torch.Tensor
    """``(N,)``: L_VLB of each example (one draw of x_t per term)."""
    per_term: torch.Tensor
    """``(T,)``: the mean of L_{t-1} at each index t (L_0 at index 0)."""
    prior: float
    """The mean of L_T."""

    @property
    def bits_per_dim(self) -> float:
        """The mean bound: an upper bound on the NLL in bits/dim."""
        return float(self.per_example.mean())

    @property
    def standard_error(self) -> float:
        """Standard error of :attr:`bits_per_dim` over the examples."""
        n = self.per_example.numel()
        return float(self.per_example.std() / math.sqrt(n)) if n > 1 else float("nan")


def nll_bits_per_dim(
    model: DiffusionModel,
    batches: list[torch.Tensor],
    *,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> NLLResult:
    """L_VLB = L_T + sum_t L_{t-1} + L_0 over ``batches`` (Ho et al. eq. 5), all T terms."""
    model.eval()
    bar = tqdm(total=model.T * len(batches), desc="nll", unit="term", disable=not progress)
    totals, term_sums, prior_sum, count = [], torch.zeros(model.T), 0.0, 0
    for x0 in batches:
        terms, prior = model.vlb_terms(x0, generator=generator, callback=lambda _: bar.update(1))
        terms_bpd = model.bits_per_dim(terms, x0).cpu()
        prior_bpd = model.bits_per_dim(prior, x0).cpu()
        totals.append(terms_bpd.sum(1) + prior_bpd)
        term_sums += terms_bpd.sum(0)
        prior_sum += float(prior_bpd.sum())
        count += x0.shape[0]
    bar.close()
    return NLLResult(torch.cat(totals), term_sums / count, prior_sum / count)


def write_eval(directory: Path, results: dict[str, Any]) -> Path:
    """Write ``eval.json`` in the run folder."""
    path = directory / "eval.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    return path


def swd_to_data(
    samples: torch.Tensor, data: torch.Tensor, projections: int, generator: torch.Generator
) -> float:
    """Sliced Wasserstein distance between samples and data, both flattened per example."""
    n = min(samples.shape[0], data.shape[0])
    return float(
        sliced_wasserstein(
            samples[:n].flatten(1).double(),
            data[:n].flatten(1).double(),
            num_projections=projections,
            generator=generator,
        )
    )


def attribute_diversity(readings: Sequence[Mapping[str, str] | None]) -> dict[str, float]:
    """How varied samples are, read back by the data set: the readable fraction, the number of
    distinct attribute combinations among the readable ones, and of each attribute alone."""
    readable = [r for r in readings if r is not None]
    keys = sorted({k for r in readable for k in r})
    result = {
        "readable_fraction": len(readable) / max(len(readings), 1),
        "distinct_combinations": float(len({tuple(sorted(r.items())) for r in readable})),
    }
    for key in keys:
        result[f"distinct_{key}"] = float(len({r.get(key) for r in readable}))
    return result


def attribute_adherence(
    readings: Sequence[Mapping[str, str] | None], wanted: Sequence[Mapping[str, str]]
) -> float:
    """The fraction of samples whose reading matches every attribute their condition asked
    for (an unreadable sample matches nothing)."""
    if len(readings) != len(wanted):
        raise ValueError(f"{len(readings)} readings but {len(wanted)} conditions")
    hits = sum(
        r is not None and all(r.get(k) == v for k, v in w.items())
        for r, w in zip(readings, wanted, strict=True)
    )
    return hits / max(len(readings), 1)


def attribute_adherence_by_key(
    readings: Sequence[Mapping[str, str] | None], wanted: Sequence[Mapping[str, str]]
) -> dict[str, float]:
    """``adherence`` (:func:`attribute_adherence`) and, when conditions ask for more than one
    attribute (a text prompt), ``adherence_<key>``: the fraction of the samples asked for
    ``key`` whose reading has it."""
    result = {"adherence": attribute_adherence(readings, wanted)}
    keys = sorted({k for w in wanted for k in w})
    if len(keys) > 1:
        for key in keys:
            pairs = [(r, {key: w[key]}) for r, w in zip(readings, wanted, strict=True) if key in w]
            result[f"adherence_{key}"] = attribute_adherence(*zip(*pairs, strict=True))
    return result


def attribute_reader(data_type: str, dataset: Dataset) -> AttributeReader | None:
    """The attribute reader registered under the data set's name ``data_type`` (kind
    ``attribute-reader``), built and bound to ``dataset``; ``None`` when that data set has
    none. A reader that is registered but cannot load is an error, not ``None``."""
    if data_type not in registry.names("attribute-reader"):
        return None
    reader: AttributeReader = registry.create("attribute-reader", data_type)
    reader.bind(dataset)
    return reader


def attribute_results(
    reader: AttributeReader, samples: torch.Tensor, conditions: Any = None
) -> dict[str, float]:
    """What ``[eval] attributes`` reports of ``samples``: their diversity
    (:func:`attribute_diversity`) and, when they were drawn for labels or captions whose
    attributes the reader knows (``conditions``: one per sample; ``None`` for unconditional
    samples, a tensor of images for image conditions: neither asks for attributes), their
    adherence (:func:`attribute_adherence_by_key`)."""
    readings = reader.read_attributes(samples)
    results = attribute_diversity(readings)
    if conditions is None or (torch.is_tensor(conditions) and conditions.ndim > 1):
        return results
    wanted = [
        reader.caption_attributes(c) if isinstance(c, str) else reader.label_attributes(int(c))
        for c in conditions
    ]
    asked = [w for w in wanted if w is not None]
    if len(asked) == len(wanted):  # else some condition asks for nothing readable
        results.update(attribute_adherence_by_key(readings, asked))
    return results
