"""The zero-terminal-SNR rescale of Lin et al. (2024), Algorithm 1, shared by every schedule."""

from __future__ import annotations

import abc

import torch
from pydantic import Field

from ddpmkit import ConfigError, NoiseSchedule, Params

TERMINAL_ABAR_MAX = 1e-10
"""The largest abar_T a zero-terminal-SNR schedule ends on (SNR(T) <= 1e-10, log-SNR <= -23)."""

TERMINAL_ABAR_RATIO = 1e-3
"""abar_T is also at most this fraction of abar_{T-1}, so abar still decreases strictly."""


class RescalableParams(Params):
    """Parameters every bundled schedule shares: the zero-terminal-SNR option."""

    zero_terminal_snr: bool = Field(
        False,
        description=(
            "Rescale sqrt(abar_t) so that abar at the last step is (almost) 0 and at the first "
            "unchanged (Lin et al. 2024, Algorithm 1); train with the v parameterization."
        ),
    )


def rescale_zero_terminal_snr(abar: torch.Tensor) -> torch.Tensor:
    """Lin et al. (2024) Algorithm 1: shift sqrt(abar) by sqrt(abar_T), scale it back to abar_1.

    sqrt(abar'_t) = (sqrt(abar_t) - sqrt(abar_T)) * sqrt(abar_1) / (sqrt(abar_1) - sqrt(abar_T)),
    so abar'_1 = abar_1 (kept bit-for-bit) and abar'_T = 0. ddpmkit's schedules keep abar in
    (0, 1] (log-SNR and the eps <-> x0 conversions need abar > 0), so abar'_T is then raised
    from 0 to min(abar'_{T-1} * TERMINAL_ABAR_RATIO, TERMINAL_ABAR_MAX): SNR(T) <= 1e-10,
    sqrt(1 - abar_T) rounds to 1 in float32 (x_T is pure noise to the model's precision),
    abar still decreases strictly and beta_T >= 0.999. As in Lin et al., train such a schedule
    with the v parameterization: at t = T, eps carries no information about x_0.

    ``abar`` is ``(T,)`` float64 with T >= 2; the result has the same shape and dtype.
    """
    if abar.numel() < 2:
        raise ConfigError("zero_terminal_snr needs at least 2 timesteps")
    sqrt_abar = abar.sqrt()
    sqrt_abar_1, sqrt_abar_T = sqrt_abar[0], sqrt_abar[-1]
    sqrt_abar = (sqrt_abar - sqrt_abar_T) * (sqrt_abar_1 / (sqrt_abar_1 - sqrt_abar_T))
    rescaled = sqrt_abar**2
    rescaled[0] = abar[0]  # unchanged in exact arithmetic; keep it bit-for-bit
    terminal = torch.clamp(rescaled[-2] * TERMINAL_ABAR_RATIO, max=TERMINAL_ABAR_MAX)
    return torch.cat([rescaled[:-1], terminal.reshape(1)])


class RescalableSchedule(NoiseSchedule):
    """A schedule given by :meth:`base_alphas_cumprod`, optionally rescaled to zero terminal SNR.

    Subclasses declare a ``Params`` derived from :class:`RescalableParams` and implement
    :meth:`base_alphas_cumprod`; the rescale (Lin et al. 2024, Algorithm 1) lives only here.
    """

    params: RescalableParams

    @abc.abstractmethod
    def base_alphas_cumprod(self) -> torch.Tensor:
        """abar_t of the schedule itself, before any rescale, shape ``(T,)``."""

    def make_alphas_cumprod(self) -> torch.Tensor:
        """abar_t, rescaled to zero terminal SNR when ``zero_terminal_snr`` is set."""
        abar = self.base_alphas_cumprod().to(torch.float64)
        if self.params.zero_terminal_snr:
            abar = rescale_zero_terminal_snr(abar)
        return abar
