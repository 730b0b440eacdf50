"""Gaussian mixtures: the one place for their maths (density, posterior mean, sampling)."""

from __future__ import annotations

import math
from typing import Annotated, Any

import torch
from pydantic import Field, model_validator
from torch import nn

from ddpmkit import Params, randn

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]


def ring(k: int = 8, radius: float = 0.8) -> list[list[float]]:
    """``k`` points evenly spaced on a circle of ``radius`` (the classic 8-Gaussians means)."""
    angles = [2.0 * math.pi * i / k for i in range(k)]
    return [[radius * math.cos(a), radius * math.sin(a)] for a in angles]


class MixtureParams(Params):
    """A mixture sum_k w_k N(mu_k, Sigma_k) in D dimensions, shared by data set and oracle.

    Give each component's covariance either in full (``covariances``) or as an isotropic
    standard deviation (``stds``), not both; with neither, every component has std 0.1.
    """

    weights: list[PositiveFloat] | None = Field(
        None, min_length=1, description="Weights w_k > 0, normalised to sum 1; None: all equal."
    )
    means: list[list[FiniteFloat]] = Field(
        default_factory=ring,
        min_length=1,
        description="Means mu_k, K rows of D numbers (default: 8 points on a circle of 0.8).",
    )
    covariances: list[list[list[FiniteFloat]]] | None = Field(
        None,
        min_length=1,
        description="Covariances Sigma_k, K symmetric positive definite D x D matrices.",
    )
    stds: list[PositiveFloat] | None = Field(
        None, min_length=1, description="Isotropic std of each component: Sigma_k = std_k^2 I."
    )

    @model_validator(mode="after")
    def _check(self) -> MixtureParams:
        K, D = len(self.means), len(self.means[0])
        if D == 0 or any(len(m) != D for m in self.means):
            raise ValueError("means must be K rows of the same length D >= 1")
        if self.weights is not None and len(self.weights) != K:
            raise ValueError(f"weights has {len(self.weights)} entries but means has K = {K}")
        if self.covariances is not None and self.stds is not None:
            raise ValueError("give covariances or stds, not both")
        if self.stds is not None and len(self.stds) != K:
            raise ValueError(f"stds has {len(self.stds)} entries but means has K = {K}")
        if self.covariances is not None:
            if len(self.covariances) != K:
                raise ValueError(f"covariances has {len(self.covariances)} matrices, not K = {K}")
            for k, matrix in enumerate(self.covariances):
                if len(matrix) != D or any(len(row) != D for row in matrix):
                    raise ValueError(f"covariances[{k}] must be {D} x {D} (means have D = {D})")
                _check_spd(torch.tensor(matrix, dtype=torch.float64), f"covariances[{k}]")
        return self

    def mixture_tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(weights (K,), means (K, D), covariances (K, D, D))`` in float64, unnormalised."""
        means = torch.tensor(self.means, dtype=torch.float64)
        K, D = means.shape
        weights = torch.ones(K, dtype=torch.float64)
        if self.weights is not None:
            weights = torch.tensor(self.weights, dtype=torch.float64)
        if self.covariances is not None:
            covariances = torch.tensor(self.covariances, dtype=torch.float64)
        else:
            stds = torch.tensor(self.stds or [0.1] * K, dtype=torch.float64)
            covariances = stds[:, None, None] ** 2 * torch.eye(D, dtype=torch.float64)
        return weights, means, covariances


def _check_spd(matrix: torch.Tensor, name: str) -> None:
    """Raise ValueError unless ``matrix`` is symmetric positive definite."""
    scale = float(matrix.abs().max().clamp(min=1.0))
    if not torch.allclose(matrix, matrix.T, rtol=0.0, atol=1e-9 * scale):
        raise ValueError(f"{name} is not symmetric")
    smallest = float(torch.linalg.eigvalsh(matrix).min())
    if smallest <= 1e-12 * scale:
        raise ValueError(f"{name} is not positive definite (smallest eigenvalue {smallest:.3g})")


class GaussianMixture(nn.Module):
    """p(x_0) = sum_k w_k N(x_0; mu_k, Sigma_k), with the exact posterior under diffusion.

    For x_t = a x_0 + s eps, component k gives x_t | k ~ N(a mu_k, a^2 Sigma_k + s^2 I) and
    E[x_0 | x_t, k] = mu_k + a Sigma_k (a^2 Sigma_k + s^2 I)^{-1} (x_t - a mu_k) (Gaussian
    conditioning, Bishop 2006 eq. 2.116); the mixture weights these by the responsibilities
    r_k(x_t) = w_k N(x_t; a mu_k, ...) / sum_j (...). Each Sigma_k = U_k diag(lambda_k) U_k^T
    is diagonalised once, so every noise level costs a rotation. All maths is float64; the
    tensors are non-persistent buffers that follow ``.to(device)``.
    """

    weights: torch.Tensor
    means: torch.Tensor
    covariances: torch.Tensor
    eigvals: torch.Tensor
    eigvecs: torch.Tensor

    def __init__(
        self, weights: torch.Tensor, means: torch.Tensor, covariances: torch.Tensor
    ) -> None:
        super().__init__()
        w, mu, cov = (v.detach().to(torch.float64) for v in (weights, means, covariances))
        if mu.ndim != 2 or w.shape != mu.shape[:1] or cov.shape != (*mu.shape, mu.shape[1]):
            raise ValueError(
                "GaussianMixture needs weights (K,), means (K, D) and covariances (K, D, D); got "
                f"{tuple(w.shape)}, {tuple(mu.shape)} and {tuple(cov.shape)}"
            )
        if not bool((w > 0).all()):
            raise ValueError("mixture weights must be positive")
        for k in range(cov.shape[0]):
            _check_spd(cov[k], f"covariance {k}")
        eigvals, eigvecs = torch.linalg.eigh(cov)
        for name, value in [
            ("weights", w / w.sum()),
            ("means", mu),
            ("covariances", cov),
            ("eigvals", eigvals),
            ("eigvecs", eigvecs),
        ]:
            self.register_buffer(name, value, persistent=False)

    def _apply(self, fn: Any, recurse: bool = True) -> GaussianMixture:
        """Follow ``.to(device)`` but stay float64 under ``.to(dtype)`` (the maths needs it)."""
        before = {name: value for name, value in self._buffers.items() if value is not None}
        super()._apply(fn, recurse)
        for name, value in before.items():
            moved = self._buffers[name]
            if moved is not None and moved.dtype != value.dtype:  # undo a cast, not a move
                self._buffers[name] = value.to(moved.device)
        return self

    @classmethod
    def from_params(cls, params: MixtureParams) -> GaussianMixture:
        """The mixture described by validated :class:`MixtureParams`."""
        return cls(*params.mixture_tensors())

    @property
    def K(self) -> int:
        """Number of components."""
        return int(self.means.shape[0])

    @property
    def D(self) -> int:
        """Dimension of the data."""
        return int(self.means.shape[1])

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.D:
            raise ValueError(f"expected points of shape (B, {self.D}), got {tuple(x.shape)}")
        return x.to(device=self.means.device, dtype=torch.float64)

    def component_posteriors(
        self, x_t: torch.Tensor, alpha: torch.Tensor | float, sigma: torch.Tensor | float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log w_k N(x_t; a mu_k, a^2 Sigma_k + s^2 I), E[x_0 | x_t, k])``, ``(B, K)`` and
        ``(B, K, D)``, for ``alpha`` = a and ``sigma`` = s scalars or one per row of ``x_t``."""
        x = self._check(x_t)
        a, s = (
            torch.as_tensor(v, dtype=torch.float64, device=x.device).reshape(-1, 1, 1)
            for v in (alpha, sigma)
        )
        # rotate x_t - a mu_k into component k's eigenbasis: y = U_k^T (x_t - a mu_k)
        y = torch.einsum("kji,bkj->bki", self.eigvecs, x[:, None, :] - a * self.means)
        # eigenvalues of the marginal covariance a^2 Sigma_k + s^2 I
        d = a**2 * self.eigvals + s**2
        # log w_k + log N(x_t; a mu_k, U_k diag(d) U_k^T)
        log_joint = (
            self.weights.log()
            - 0.5 * (y**2 / d).sum(-1)
            - 0.5 * d.log().sum(-1)
            - 0.5 * self.D * math.log(2.0 * math.pi)
        )
        # E[x_0 | x_t, k] = mu_k + U_k diag(a lambda_k / d) y
        mean = self.means + torch.einsum("kij,bkj->bki", self.eigvecs, a * self.eigvals / d * y)
        return log_joint, mean

    def responsibilities(
        self, x_t: torch.Tensor, alpha: torch.Tensor | float, sigma: torch.Tensor | float
    ) -> torch.Tensor:
        """r_k(x_t) = p(k | x_t), ``(B, K)`` float64."""
        log_joint, _ = self.component_posteriors(x_t, alpha, sigma)
        return log_joint.softmax(dim=-1)

    def posterior_mean(
        self,
        x_t: torch.Tensor,
        alpha: torch.Tensor | float,
        sigma: torch.Tensor | float,
        components: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """E[x_0 | x_t] = sum_k r_k(x_t) E[x_0 | x_t, k], ``(B, D)`` float64.

        ``components`` ``(B, K)``, 0 or 1, restricts row b to the components it marks (a
        class label as a one-hot row: E[x_0 | x_t, k]); an all-zero row keeps them all.
        """
        log_joint, mean = self.component_posteriors(x_t, alpha, sigma)
        if components is not None:
            mask = components.to(log_joint.device, torch.float64)
            keep = (mask > 0) | (mask.sum(-1, keepdim=True) == 0)
            log_joint = log_joint.masked_fill(~keep, float("-inf"))
        return torch.einsum("bk,bkd->bd", log_joint.softmax(dim=-1), mean)

    def log_prob(self, x0: torch.Tensor) -> torch.Tensor:
        """log p(x_0) in nats, ``(B,)`` float64."""
        log_joint, _ = self.component_posteriors(x0, 1.0, 0.0)
        return log_joint.logsumexp(dim=-1)

    def sample_labelled(
        self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` draws ``(n, D)`` and their components ``(n,)``: k ~ w, x_0 = mu_k + L_k z."""
        source = generator.device if generator is not None else torch.device("cpu")
        # pick the components, then z ~ N(0, I), both from the generator
        k = torch.multinomial(self.weights.to(source), n, replacement=True, generator=generator)
        z = randn((n, self.D), generator=generator, dtype=torch.float64)
        k, z = k.to(self.means.device), z.to(self.means.device)
        # x_0 = mu_k + U_k diag(sqrt(lambda_k)) z
        x = self.means[k] + torch.einsum("nij,nj->ni", self.eigvecs[k], self.eigvals[k].sqrt() * z)
        return x.to(dtype), k

    def sample(
        self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """``n`` draws from the mixture, ``(n, D)``."""
        return self.sample_labelled(n, generator, dtype)[0]
