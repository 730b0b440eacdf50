"""Vector data sets ``(D,)``: ``gmm``, ``two-moons``, ``swiss-roll`` and ``checkerboard``."""

from __future__ import annotations

import abc
import math
import operator
from collections.abc import Sequence
from typing import SupportsIndex

import torch
from pydantic import Field

from ddpmkit import Batch, Dataset, Example, Params
from ddpmkit_toy.mixture import GaussianMixture, MixtureParams


class VectorParams(Params):
    """Parameters every vector data set shares."""

    num_examples: int = Field(10000, ge=1, le=10_000_000, description="Number of examples.")
    seed: int = Field(0, ge=0, description="Seed; the whole data set is a function of it.")


class VectorDataset(Dataset):
    """Points ``(D,)`` drawn once from :meth:`generate` and kept as one tensor.

    ``image_size`` is 0 and :attr:`shape` is ``(D,)``; ``Example.image`` is a ``(D,)`` float32
    tensor, and :meth:`batch` slices the stored tensor. The same ``seed`` gives the same data.
    """

    params: VectorParams

    def __init__(self, params: VectorParams | None = None) -> None:
        super().__init__(params)
        generator = torch.Generator().manual_seed(self.params.seed)
        points, labels = self.generate(self.params.num_examples, generator)
        self.points = points.to(torch.float32).contiguous()
        self.labels = labels.to(torch.long)
        self.channels = int(self.points.shape[1])
        self.image_size = 0

    @abc.abstractmethod
    def generate(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` points ``(n, D)`` and labels ``(n,)`` (-1: none), drawn from ``generator``."""

    @property
    def shape(self) -> tuple[int, ...]:
        """``(D,)``."""
        return (self.channels,)

    def __len__(self) -> int:
        """Number of examples."""
        return self.params.num_examples

    def __getitem__(self, index: SupportsIndex) -> Example:
        """The example at ``index``."""
        i = operator.index(index)
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} is out of range for a data set of {len(self)} examples")
        return Example(image=self.points[i], label=int(self.labels[i]))

    def batch(self, indices: Sequence[SupportsIndex]) -> Batch:
        """The examples at ``indices``, sliced from the stored tensor."""
        idx = torch.tensor([operator.index(i) for i in indices], dtype=torch.long)
        n = len(self)
        if idx.numel() and bool(((idx < -n) | (idx >= n)).any()):
            raise IndexError(f"an index is out of range for a data set of {n} examples")
        idx = idx % n
        return Batch(images=self.points[idx], labels=self.labels[idx], captions=("",) * len(idx))


class GMMDatasetParams(VectorParams, MixtureParams):
    """Parameters of the ``gmm`` data set: the mixture (as for ``gmm-oracle``) and its size."""


class GMMDataset(VectorDataset):
    """Draws from sum_k w_k N(mu_k, Sigma_k); the label is the component k.

    Its mixture parameters are those of the ``gmm-oracle`` denoiser, so a pipeline can pair the
    data with its exact denoiser.
    """

    Params = GMMDatasetParams
    params: GMMDatasetParams

    def __init__(self, params: GMMDatasetParams | None = None) -> None:
        self._set_params(params)
        self.mixture = GaussianMixture.from_params(self.params)
        super().__init__(self.params)
        self.num_classes = self.mixture.K

    def generate(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """n draws of the mixture with their components."""
        return self.mixture.sample_labelled(n, generator)


class NoisyParams(VectorParams):
    """Parameters of the 2D curve data sets."""

    noise: float = Field(
        0.03, ge=0.0, le=1.0, description="Std of the Gaussian noise added to each point."
    )


class TwoMoonsDataset(VectorDataset):
    """Two interleaved half circles (as scikit-learn's make_moons), scaled to x in [-1, 1].

    The label says which moon; the moons have radius 1 / 1.5 after scaling.
    """

    Params = NoisyParams
    params: NoisyParams
    num_classes = 2

    def generate(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Upper moon (cos, sin), lower moon (1 - cos, 1/2 - sin), centred and divided by 1.5."""
        moon = torch.randint(0, 2, (n,), generator=generator)
        theta = torch.rand(n, generator=generator, dtype=torch.float64) * math.pi
        upper = torch.stack([theta.cos(), theta.sin()], dim=1)
        lower = torch.stack([1.0 - theta.cos(), 0.5 - theta.sin()], dim=1)
        x = torch.where(moon[:, None] == 0, upper, lower)
        x = (x - torch.tensor([0.5, 0.25], dtype=torch.float64)) / 1.5
        noise = torch.randn(n, 2, generator=generator, dtype=torch.float64)
        return x + self.params.noise * noise, moon


class SwissRollDataset(VectorDataset):
    """The 2D swiss roll theta (cos theta, sin theta), theta in [1.5 pi, 4.5 pi], radius <= 1."""

    Params = NoisyParams
    params: NoisyParams

    def generate(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """theta uniform, point theta (cos theta, sin theta) / (4.5 pi), plus noise."""
        theta = 1.5 * math.pi * (1.0 + 2.0 * torch.rand(n, generator=generator).double())
        x = theta[:, None] * torch.stack([theta.cos(), theta.sin()], dim=1) / (4.5 * math.pi)
        noise = torch.randn(n, 2, generator=generator, dtype=torch.float64)
        return x + self.params.noise * noise, torch.full((n,), -1)


class CheckerboardParams(VectorParams):
    """Parameters of the ``checkerboard`` data set."""

    squares: int = Field(
        4, ge=2, le=64, description="Squares per side of the board that covers [-1, 1]^2."
    )


class CheckerboardDataset(VectorDataset):
    """Uniform on the squares (i, j) with i + j even of a board covering [-1, 1]^2."""

    Params = CheckerboardParams
    params: CheckerboardParams

    def generate(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Pick one of the dark squares uniformly, then a uniform point inside it."""
        m = self.params.squares
        dark = torch.tensor([(j, i) for i in range(m) for j in range(m) if (i + j) % 2 == 0])
        corner = dark[torch.randint(0, len(dark), (n,), generator=generator)].double()
        u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
        return (corner + u) * (2.0 / m) - 1.0, torch.full((n,), -1)
