"""Bundled parameterizations: predict ``eps`` (Ho et al.), ``x0``, or ``v`` (Salimans & Ho)."""

from __future__ import annotations

import torch

from ddpmkit import CheckContext, ConfigError, Parameterization, eps_from_x0, x0_from_eps

DDPMKIT_PLUGIN_API = "2.0"
"""The ddpmkit plugin API this plugin is written for."""

__all__ = ["EpsParameterization", "VParameterization", "X0Parameterization"]


class EpsParameterization(Parameterization):
    """The network predicts the noise eps (Ho et al. 2020, eq. 11)."""

    def target(
        self, x0: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor
    ) -> torch.Tensor:
        """eps."""
        return eps

    def to_eps_x0(
        self, output: torch.Tensor, x_t: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """eps = output; x0 from eq. 4."""
        return output, x0_from_eps(x_t, output, alpha, sigma)

    def eps_error_factor(self, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The target is eps: f = 1."""
        return torch.ones_like(alpha)

    def check(self, context: CheckContext) -> None:
        """Refuse a zero-terminal-SNR schedule (Lin et al. 2024, section 3.2).

        At SNR(T) = 0, x_T is pure noise: eps_theta(x_T) = x_T is trivial to learn and says
        nothing about x_0, and x0 = (x_T - sigma eps) / alpha divides by alpha_T ~ 0.
        """
        schedule = context.model.schedule
        if schedule.zero_terminal_snr:
            raise ConfigError(
                f"parameterization eps cannot learn a zero-terminal-SNR schedule (SNR(T) = "
                f"{schedule.snr[-1].item():.1e}): eps at t = T carries no information about x0 "
                "(Lin et al. 2024); use parameterization v"
            )


class X0Parameterization(Parameterization):
    """The network predicts the clean sample x_0 (Ho et al. 2020, section 3.2)."""

    def target(
        self, x0: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor
    ) -> torch.Tensor:
        """x_0."""
        return x0

    def to_eps_x0(
        self, output: torch.Tensor, x_t: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x0 = output; eps from eq. 4."""
        return eps_from_x0(x_t, output, alpha, sigma), output

    def eps_error_factor(self, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """eps_hat - eps = -(alpha / sigma)(x0_hat - x0): f = alpha^2 / sigma^2 = SNR."""
        return alpha**2 / sigma**2


class VParameterization(Parameterization):
    """The network predicts v = alpha eps - sigma x_0 (Salimans & Ho 2022, section 4)."""

    def target(
        self, x0: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor
    ) -> torch.Tensor:
        """v = alpha_t eps - sigma_t x_0."""
        return alpha * eps - sigma * x0

    def to_eps_x0(
        self, output: torch.Tensor, x_t: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x_0 = alpha x_t - sigma v and eps = sigma x_t + alpha v (alpha^2 + sigma^2 = 1)."""
        return sigma * x_t + alpha * output, alpha * x_t - sigma * output

    def eps_error_factor(self, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """eps_hat - eps = alpha (v_hat - v) when alpha^2 + sigma^2 = 1: f = alpha^2."""
        return alpha**2
