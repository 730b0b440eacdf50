"""``gmm-oracle``: the exact denoiser of a Gaussian mixture, a network-free reference."""

from __future__ import annotations

from typing import Any

import attrs
import torch

from ddpmkit import Conditioning, Denoiser, NoiseSchedule, Parameterization
from ddpmkit_toy._cond import check_unconditional
from ddpmkit_toy.mixture import GaussianMixture, MixtureParams


class GMMOracle(Denoiser):
    """The minimum-MSE denoiser of a Gaussian mixture, E[target | x_t] in closed form.

    The optimum of L_simple (Ho et al. 2020, eq. 14) is eps*(x_t, t) = E[eps | x_t]; with
    x_t = a x_0 + s eps (a = sqrt(abar_t), s = sqrt(1 - abar_t)) it is
    (x_t - a E[x_0 | x_t]) / s, and E[x_0 | x_t] is exact for a mixture (see
    :class:`~ddpmkit_toy.mixture.GaussianMixture`). The x0 and v targets are linear in
    (x_0, eps), so their expectations come from the parameterization's own ``target``.
    Inputs are ``(B, D)``; the maths runs in float64 and the output has ``x_t``'s dtype.
    ``cond.embedding``, one-hot ``(B, K)`` (the ``class`` conditioner's ``one-hot`` encoding),
    makes it the exact denoiser of component k alone; an all-zero row (the null condition)
    of the whole mixture.
    The oracle has no trainable parameters; it must be bound to a schedule before use.
    """

    Params = MixtureParams
    params: MixtureParams
    alphas_cumprod: torch.Tensor

    def __init__(self, params: MixtureParams | None = None) -> None:
        super().__init__(params)
        self.mixture = GaussianMixture.from_params(self.params)
        self.parameterization: Parameterization | None = None
        self.register_buffer("alphas_cumprod", torch.empty(0, dtype=torch.float64), False)

    def _apply(self, fn: Any, recurse: bool = True) -> GMMOracle:
        """Follow ``.to(device)``; abar stays float64 under ``.to(dtype)``, as the maths runs in
        float64 whatever the input's dtype."""
        abar = self.alphas_cumprod
        super()._apply(fn, recurse)
        if self.alphas_cumprod.dtype != abar.dtype:  # undo a cast, keep a move
            self.alphas_cumprod = abar.to(self.alphas_cumprod.device)
        return self

    def bind(self, schedule: NoiseSchedule, parameterization: Parameterization) -> None:
        """Record abar_t of ``schedule`` (float64) and what the model reads the output as."""
        self.alphas_cumprod = schedule.alphas_cumprod.to(self.mixture.means.device, torch.float64)
        self.parameterization = parameterization

    @property
    def in_channels(self) -> int:
        """D, the dimension of the mixture."""
        return self.mixture.D

    @property
    def out_channels(self) -> int:
        """D."""
        return self.mixture.D

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None
    ) -> torch.Tensor:
        """E[target | x_t] for the parameterization's target, ``(B, D)``."""
        components = cond.embedding if cond is not None else None
        rest = cond if components is None else attrs.evolve(cond, embedding=None)  # type: ignore[misc]
        check_unconditional(rest, "gmm-oracle")
        if components is not None and components.shape != (x_t.shape[0], self.mixture.K):
            raise ValueError(
                f"gmm-oracle: cond.embedding must be one-hot classes of shape "
                f"{(x_t.shape[0], self.mixture.K)}, got {tuple(components.shape)}"
            )
        if self.parameterization is None:
            raise RuntimeError("gmm-oracle is not bound: build a DiffusionModel with it")
        x = x_t.to(torch.float64)
        abar = self.alphas_cumprod[t.to(self.alphas_cumprod.device)].to(x.device)[:, None]
        a, s = abar.sqrt(), (1.0 - abar).sqrt()
        # E[x_0 | x_t], exact for the mixture
        x0_hat = self.mixture.posterior_mean(x, a, s, components).to(x.device)
        # E[eps | x_t] = (x_t - a E[x_0 | x_t]) / s, by linearity of x_t = a x_0 + s eps
        eps_hat = (x - a * x0_hat) / s
        # E[target | x_t] = target(E[x_0 | x_t], E[eps | x_t]): every target is linear
        return self.parameterization.target(x0_hat, eps_hat, a, s).to(x_t.dtype)

    def log_prob(self, x0: torch.Tensor) -> torch.Tensor:
        """Exact log p(x_0) of the data in nats, ``(B,)`` float64."""
        return self.mixture.log_prob(x0)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` draws ``(n, D)`` float32 from the mixture the oracle denoises."""
        return self.mixture.sample(n, generator)
