"""The few-step DDGAN chain (Xiao et al. 2022, section 3.2 and Algorithm 1's sampling)."""

from __future__ import annotations

import attrs
import torch

from ddpmkit import (
    CheckContext,
    Conditioning,
    DiffusionModel,
    Guidance,
    Params,
    Sampler,
    SamplerCallback,
    SamplerStep,
    guided_predict,
    randn,
    randn_like,
)
from ddpmkit_ddgan.generator import generator_of


class DDGANSampler(Sampler):
    """x_T ~ N(0, I); then for t = T .. 1: z ~ N(0, I), x0' = G(x_t, z, t) and
    x_{t-1} ~ q(x_{t-1} | x_t, x0') (Xiao et al. 2022, eq. 5); x_0 = x0' at the last step.

    Every training step is visited (a DDGAN has few: T = 2 .. 8), so T network calls.
    """

    Params = Params

    def check(self, context: CheckContext) -> None:
        """The denoiser must be a ``ddgan-generator`` (it takes z)."""
        generator_of(context.model, "sampler ddgan")

    def sample(
        self,
        model: DiffusionModel,
        shape: tuple[int, ...],
        *,
        x_T: torch.Tensor | None = None,
        cond: Conditioning | None = None,
        guidance: Guidance | list[Guidance] | None = None,
        generator: torch.Generator | None = None,
        callback: SamplerCallback | None = None,
    ) -> torch.Tensor:
        """Xiao et al. (2022) section 3.2, the chain of eq. 5; see :class:`ddpmkit.Sampler`."""
        z_dim = generator_of(model, "sampler ddgan").z_dim
        device = model.alphas_cumprod.device
        predict = guided_predict(model, guidance)
        base = cond if cond is not None else Conditioning()
        if base.embedding is not None:
            raise ValueError("ddgan: cond.embedding carries z; pass the condition elsewhere")
        with torch.no_grad():
            # x_T ~ N(0, I)
            x = randn(shape, generator=generator, device=device) if x_T is None else x_T
            x = x.to(device)
            for i, t in enumerate(range(model.T - 1, -1, -1)):
                t_batch = torch.full((shape[0],), t, device=device, dtype=torch.long)
                # z ~ N(0, I), then x0' = G(x_t, z, t)
                z = randn((shape[0], z_dim), generator=generator, device=device)
                pred = predict(x, t_batch, attrs.evolve(base, embedding=z))
                # x_{t-1} ~ q(x_{t-1} | x_t, x0'); the last step returns x0'
                if t > 0:
                    mean, variance, _ = model.q_posterior(pred.x0, x, t_batch)
                    x = mean + variance.sqrt() * randn_like(x, generator)
                else:
                    x = pred.x0
                if callback is not None:
                    callback(SamplerStep(index=i, total=model.T, t=t, x=x, x0=pred.x0))
        return x
