"""Analytic-DPM (Bao et al. 2022): the optimal reverse variance, estimated after training."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from pydantic import Field

from ddpmkit import (
    ConfigError,
    DdpmkitError,
    DiffusionModel,
    Params,
    ReverseVariance,
    column,
    randn_like,
)


class AnalyticVarianceParams(Params):
    """Parameters of the ``analytic`` variance."""

    num_examples: int = Field(
        256,
        ge=1,
        le=10_000_000,
        description="Data examples averaged per timestep to estimate Gamma_t.",
    )
    data_half_range: float = Field(
        1.0,
        ge=0,
        description=(
            "Half the width of the data's range ((b - a) / 2; 1 for data in [-1, 1]): bounds "
            "Var[x_0 | x_t], hence sigma^2 (Bao et al. Theorem 2), which tames the estimate's "
            "noise where abar_t is tiny; 0 for no bound (unbounded data)."
        ),
    )


class AnalyticVariance(ReverseVariance):
    """sigma*^2 = lambda^2 + (sqrt(bbar_t / a_t) - sqrt(bbar_s - lambda^2))^2 (1 - Gamma_t).

    Bao et al. 2022, Theorem 1 and Algorithm 1, with lambda^2 = beta~_{t|s} (the DDPM chain),
    a_t = abar_t / abar_s, bbar = 1 - abar, and Gamma_t = E_q ||eps_theta(x_t, t)||^2 / d
    (= bbar_t E||score||^2 / d) estimated from data by :meth:`fit` with no retraining; clipped
    to the bounds of their Theorem 2.
    """

    Params = AnalyticVarianceParams
    params: AnalyticVarianceParams
    gamma: torch.Tensor

    def __init__(self, params: AnalyticVarianceParams | None = None) -> None:
        super().__init__(params)
        self.register_buffer("gamma", torch.empty(0))

    @torch.no_grad()
    def fit(self, model: DiffusionModel, data: Iterable[torch.Tensor]) -> None:
        """Gamma_t = mean over data of ||eps_theta(x_t, t)||^2 / d, for every t."""
        batches, seen = [], 0
        for x0 in data:
            batches.append(x0[: self.params.num_examples - seen])
            seen += batches[-1].shape[0]
            if seen >= self.params.num_examples:
                break
        r = self.params.data_half_range
        largest = max(float(x0.abs().max()) for x0 in batches)
        if r > 0 and largest > r:
            raise ConfigError(
                f"variance.data_half_range = {r} but the data reach |x| = {largest:.3g}: the "
                "bound of Bao et al. Theorem 2 needs the data inside [-r, r]; raise it, or 0"
            )
        gamma = torch.zeros(model.T, dtype=torch.float64, device=model.alphas_cumprod.device)
        generator = torch.Generator().manual_seed(0)
        for index in range(model.T):
            for x0 in batches:
                x0 = x0.to(gamma.device)
                t = torch.full((x0.shape[0],), index, device=x0.device, dtype=torch.long)
                x_t = model.q_sample(x0, t, randn_like(x0, generator))
                eps = model.predict(x_t, t).eps
                gamma[index] += eps.double().pow(2).flatten(1).mean(1).sum() / seen
        self.gamma = gamma

    def log_variance(
        self,
        model: DiffusionModel,
        t: torch.Tensor,
        s: torch.Tensor,
        extra: torch.Tensor | None,
        x_t: torch.Tensor,
    ) -> torch.Tensor:
        """log sigma*^2 of the step t -> s."""
        if self.gamma.numel() != model.T:
            raise DdpmkitError("analytic variance: call fit(model, data) before sampling")
        abar_t, abar_s = model.abar_at(t), model.abar_at(s)
        _, lam2 = model.step_variances(t, s)
        bbar_t, bbar_s = 1.0 - abar_t, 1.0 - abar_s
        root = (bbar_s - lam2).clamp(min=0).sqrt()
        # the correction term's coefficient: (sqrt(bbar_t / a_t) - sqrt(bbar_s - lambda^2))^2
        coef = ((bbar_t * abar_s / abar_t).sqrt() - root) ** 2
        # Theorem 1: lambda^2 + coef (1 - Gamma_t), clipped to [lambda^2, lambda^2 + coef]
        optimal = lam2 + coef * (1.0 - self.gamma[t]).clamp(0.0, 1.0)
        if self.params.data_half_range > 0:
            # Theorem 2: sigma*^2 <= lambda^2 + (sqrt(abar_s) - root sqrt(abar_t / bbar_t))^2 r^2
            x0_coef = abar_s.sqrt() - root * (abar_t / bbar_t).sqrt()
            bound = lam2 + x0_coef**2 * self.params.data_half_range**2
            optimal = torch.minimum(optimal, bound)
        return column(optimal.clamp(min=model.variance_floor).log().to(x_t.dtype), x_t.ndim)
