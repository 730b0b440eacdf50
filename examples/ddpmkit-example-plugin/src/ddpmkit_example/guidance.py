"""Mean-intensity guidance: forward universal guidance (Bansal et al. 2023) with a loss on the
mean intensity of the predicted clean image."""

from __future__ import annotations

import torch
from pydantic import Field

import ddpmkit


class MeanIntensityGuidanceParams(ddpmkit.Params):
    """Parameters of the ``mean-intensity`` guidance."""

    target: float = Field(
        0.0, ge=-1.0, le=1.0, description="Mean intensity wanted, on the data's [-1, 1] scale."
    )
    scale: float = Field(1.0, ge=0.0, description="Guidance strength s (0: no guidance).")


class MeanIntensityGuidance(ddpmkit.Guidance):
    """eps' = eps + s sqrt(1 - abar_t) grad_{x_t} l(x0_hat(x_t)) (Bansal et al. 2023,
    sec. 3.1, forward guidance),
    with l = (mean of x0_hat over its pixels - target)^2 for each sample.

    The gradient goes through the model's prediction (the network), so it works with any
    denoiser, parameterization and sampler; x0 is recomputed from eps' by Ho et al. eq. 4.
    """

    Params = MeanIntensityGuidanceParams
    params: MeanIntensityGuidanceParams

    def guide(
        self,
        model: ddpmkit.DiffusionModel,
        predict: ddpmkit.PredictFn,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: ddpmkit.Conditioning | None,
    ) -> ddpmkit.Prediction:
        """The prediction with eps moved down the gradient of the intensity loss."""
        # samplers may run under inference_mode or no_grad: the gradient needs neither, and
        # tensors made under inference_mode (x_t, t) are cloned into ordinary ones
        with torch.inference_mode(False), torch.enable_grad():
            x = x_t.detach().clone().requires_grad_(True)
            inner = predict(x, t.clone(), cond)
            mean = inner.x0.flatten(1).mean(dim=1)
            loss = ((mean - self.params.target) ** 2).sum()  # samples are independent
            (grad,) = torch.autograd.grad(loss, x)
        alpha, sigma = model.alpha_sigma(t, x_t.ndim)
        eps = inner.eps.detach() + self.params.scale * sigma * grad
        x0 = ddpmkit.x0_from_eps(x_t, eps, alpha, sigma)
        return ddpmkit.Prediction(eps=eps, x0=x0, output=inner.output.detach())
