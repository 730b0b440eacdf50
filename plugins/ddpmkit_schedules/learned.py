"""The learned noise schedule of Kingma et al. (2021), section 3.2 and Appendix H."""

from __future__ import annotations

import torch
from pydantic import Field, model_validator
from torch import nn

from ddpmkit import LearnableSchedule, LearnableScheduleParams


class LearnedScheduleParams(LearnableScheduleParams):
    """Parameters of the ``learned`` schedule (initial end points and network width)."""

    log_snr_max: float = Field(
        13.3, description="Initial log SNR at index 0 (-gamma_min; 13.3 in Kingma et al.)."
    )
    log_snr_min: float = Field(
        -5.0, description="Initial log SNR at index T-1 (-gamma_max; -5 in Kingma et al.)."
    )
    hidden: int = Field(
        1024, ge=1, le=65536, description="Width of the monotonic network's hidden layer."
    )
    learn_ends: bool = Field(True, description="Train the end points on the bound.")
    learn_shape: bool = Field(
        True, description="Train the shape between the end points on the bound's variance."
    )

    @model_validator(mode="after")
    def _check_ends(self) -> LearnedScheduleParams:
        if self.log_snr_min >= self.log_snr_max:
            raise ValueError("log_snr_min must be less than log_snr_max")
        return self


class LearnedSchedule(LearnableSchedule):
    """gamma(tau) = gamma_0 + (gamma_1 - gamma_0) (g(tau) - g(0)) / (g(1) - g(0)), log SNR =
    -gamma (Kingma et al. 2021, eq. 5 and Appendix H).

    g is the monotonic network of Appendix H: g(tau) = l1(tau) + l3(sigmoid(l2(l1(tau)))),
    every weight kept positive (a softplus of the raw weight), so g increases strictly in tau.
    Index ``t`` sits at tau = t / (T - 1): index 0 is the least noisy latent, with log SNR
    -gamma_0, and index T - 1 the last, with -gamma_1. The end points are trainable scalars
    (``ends`` in :meth:`log_snr_at`), the network only shapes the curve between them
    (``shape``). The network starts near zero, so the schedule starts linear in log SNR.
    """

    Params = LearnedScheduleParams
    params: LearnedScheduleParams

    def build(self) -> None:
        """gamma_0, log(gamma_1 - gamma_0) and the three positive layers of g."""
        p = self.params
        self.gamma_0 = nn.Parameter(torch.tensor(-p.log_snr_max), requires_grad=p.learn_ends)
        gap = torch.tensor(p.log_snr_max - p.log_snr_min)
        # gamma_1 - gamma_0 = exp(log_gap) > 0 keeps the end points in order
        self.log_gap = nn.Parameter(gap.log(), requires_grad=p.learn_ends)
        generator = torch.Generator().manual_seed(0)  # the same start for every seed
        self.l1_weight = nn.Parameter(torch.tensor(_inverse_softplus(1.0)))
        self.l1_bias = nn.Parameter(torch.tensor(0.0))
        self.l2_weight = nn.Parameter(torch.randn(p.hidden, generator=generator))
        self.l2_bias = nn.Parameter(torch.randn(p.hidden, generator=generator))
        self.l3_weight = nn.Parameter(torch.zeros(p.hidden))
        for param in (self.l1_weight, self.l1_bias, self.l2_weight, self.l2_bias, self.l3_weight):
            param.requires_grad_(p.learn_shape)

    def g(self, tau: torch.Tensor) -> torch.Tensor:
        """The monotonic network g(tau) = l1(tau) + l3(sigmoid(l2(l1(tau)))) (Appendix H)."""
        h = nn.functional.softplus(self.l1_weight) * tau + self.l1_bias
        hidden = torch.sigmoid(
            nn.functional.softplus(self.l2_weight) * h.unsqueeze(-1) + self.l2_bias
        )
        return h + hidden @ nn.functional.softplus(self.l3_weight) / self.params.hidden

    def log_snr_at(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ends, shape)``: -gamma at indices ``t``, split as :meth:`LearnableSchedule.log_snr_at`
        asks (in the dtype and on the device of the parameters)."""
        tau = t.to(self.gamma_0.device, self.gamma_0.dtype) / (self.params.timesteps - 1)
        ends01 = torch.stack([torch.zeros_like(self.gamma_0), torch.ones_like(self.gamma_0)])
        g_all = self.g(torch.cat([ends01, tau]))
        # the normalised shape: 0 at tau = 0, 1 at tau = 1, increasing in between
        shape01 = (g_all[2:] - g_all[0]) / (g_all[1] - g_all[0])
        gap = self.log_gap.exp()
        ends = -(self.gamma_0 + gap * shape01.detach())
        shape = -(self.gamma_0.detach() + gap.detach() * shape01)
        return ends, shape


def _inverse_softplus(y: float) -> float:
    """x with softplus(x) = y."""
    return float(torch.log(torch.expm1(torch.tensor(y))))
