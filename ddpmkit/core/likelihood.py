"""Gaussian densities of the variational bound: KL, the decoder likelihoods (nats, elementwise)."""

from __future__ import annotations

import math

import torch


def normal_kl(
    mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor
) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) per element, in nats."""
    return 0.5 * (
        logvar2
        - logvar1
        + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
        - 1.0
    )


def _standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor, bits: int = 8
) -> torch.Tensor:
    """log p(x_0 | x_1) of Ho et al. eq. 13: N(mean, e^{2 log_scale}) integrated over each bin.

    ``x`` holds 8-bit data scaled to [-1, 1]; bin edges are x +- 1/(2^bits - 1), and the first
    and last bins extend to -inf and +inf.
    """
    half_bin = 1.0 / (2**bits - 1)
    inv_std = torch.exp(-log_scale)
    cdf_plus = _standard_normal_cdf(inv_std * (x - mean + half_bin))
    cdf_minus = _standard_normal_cdf(inv_std * (x - mean - half_bin))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_minus = torch.log((1.0 - cdf_minus).clamp(min=1e-12))
    log_bin = torch.log((cdf_plus - cdf_minus).clamp(min=1e-12))
    edge = 1.0 - 1e-3
    return torch.where(
        x < -edge, log_cdf_plus, torch.where(x > edge, log_one_minus_cdf_minus, log_bin)
    )


def gaussian_log_likelihood(
    x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor
) -> torch.Tensor:
    """log N(x; mean, e^{2 log_scale}) per element: the decoder for continuous data."""
    return -0.5 * (
        math.log(2.0 * math.pi) + 2.0 * log_scale + (x - mean) ** 2 * torch.exp(-2.0 * log_scale)
    )
