"""Classifier-free guidance (Ho & Salimans 2021, eq. 6)."""

from __future__ import annotations

import torch
from pydantic import Field

from ddpmkit import (
    Conditioning,
    DiffusionModel,
    Guidance,
    Params,
    PredictFn,
    Prediction,
    x0_from_eps,
)


class ClassifierFreeGuidanceParams(Params):
    """Parameters of ``classifier-free`` guidance."""

    scale: float = Field(
        1.0, ge=0.0, le=1000.0, description="Guidance strength w (0: the conditional model)."
    )


class ClassifierFreeGuidance(Guidance):
    """eps~(x_t, c) = (1 + w) eps(x_t, c) - w eps(x_t, null) (Ho & Salimans 2021, eq. 6).

    The conditional and the null-condition predictions come from one network call on the
    batch doubled (x_t twice; c, then the conditioner's null), and x0 is re-derived from eps~,
    so every sampler and parameterization works with it. A call without a condition is
    passed through unguided (there is nothing to guide towards).
    """

    Params = ClassifierFreeGuidanceParams
    params: ClassifierFreeGuidanceParams
    needs_conditioner = True

    def guide(
        self,
        model: DiffusionModel,
        predict: PredictFn,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: Conditioning | None,
    ) -> Prediction:
        """The guided prediction at ``(x_t, t)`` for the condition ``cond``."""
        if cond is None or model.conditioner is None:
            return predict(x_t, t, cond)
        batch = x_t.shape[0]
        null = model.conditioner.null(batch, x_t.device)
        # one call: the conditional and the unconditional prediction, batched
        both = predict(torch.cat([x_t, x_t]), torch.cat([t, t]), Conditioning.cat([cond, null]))
        eps_c, eps_u = both.eps[:batch], both.eps[batch:]
        # eps~ = (1 + w) eps(x_t, c) - w eps(x_t, null)
        w = self.params.scale
        eps = (1.0 + w) * eps_c - w * eps_u
        alpha, sigma = model.alpha_sigma(t, x_t.ndim)
        return Prediction(
            eps=eps, x0=x0_from_eps(x_t, eps, alpha, sigma), output=both.output[:batch]
        )
