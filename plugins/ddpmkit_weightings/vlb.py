"""The true variational-bound weight of Ho et al. (2020), eq. 12."""

from __future__ import annotations

import torch

from ddpmkit import CheckContext, ConfigError, DiffusionModel, LossWeighting


class VLBWeighting(LossWeighting):
    """w_t = lambda_t = beta_t^2 / (2 sigma_t^2 alpha_t (1 - abar_t)): L_vlb (Ho et al. eq. 12).

    For index t > 0, L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t)) = C_t +
    sum over the d dimensions of lambda_t (eps - eps_theta(x_t, t))^2, where C_t = d/2 (log
    (sigma_t^2 / beta~_t) + beta~_t / sigma_t^2 - 1) does not depend on theta (C_t = 0 for
    sigma_t^2 = beta~_t). The model's loss averages ||eps_hat - eps||^2 over dimensions, so
    w_t = lambda_t, with no factor d, makes an example's loss (L_{t-1} - C_t) / d: the
    trainable part of L_{t-1} in nats per dimension, ``model.vlb_term`` minus C_t over d.
    Uniform t then trains sum_t L_{t-1} / (T d), i.e. L_vlb up to constants and L_T.

    sigma_t^2 is the model's fixed reverse variance, as ``DiffusionModel.step_log_variances``
    gives it (clipped there): beta_t for ``fixed-large`` and for a model without a variance
    (Ho et al. Algorithm 2), beta~_t for ``fixed-small``. Any other variance (learned-range,
    analytic) raises :class:`~ddpmkit.ConfigError`: its sigma^2 depends on the network or on
    a fit after training, so L_vlb is not an eps-space weight; use the hybrid loss
    (``train.vlb_weight``) instead.

    Index t = 0 is L_0 = -log p_theta(x_0 | x_1), which Ho et al. treat separately with a
    discretized decoder (eq. 13). The same formula with the step onto x_0 (beta = 1 - abar_0,
    alpha = abar_0) and the clipped sigma^2 is exact for the Gaussian decoder (mu_theta is
    then x0_hat, and C_0 = d/2 log(2 pi sigma^2)); for the discretized decoder it is the
    approximation Ho et al. use for L_simple's t = 1 term (section 3.4: the decoder's
    integral replaced by the Gaussian density times the bin width).
    """

    def check(self, context: CheckContext) -> None:
        """Raise :class:`~ddpmkit.ConfigError` unless the model's reverse variance is fixed."""
        self._variance_index(context.model)

    def _variance_index(self, model: DiffusionModel) -> int:
        """0 when sigma_t^2 = beta_t, 1 when sigma_t^2 = beta~_t."""
        if model.variance is None:
            return 0
        fixed = model.variance.fixed
        if fixed is None:
            raise ConfigError(
                f"weighting {type(self).__name__}: the VLB weight needs a fixed reverse variance "
                f"(none, fixed-large or fixed-small), not {type(model.variance).__name__}; "
                "train a learned or analytic variance with the hybrid loss (train.vlb_weight)"
            )
        return 0 if fixed == "beta" else 1

    def weights(self, t: torch.Tensor, model: DiffusionModel) -> torch.Tensor:
        """lambda_t for the step t -> t - 1, computed in float64, in the model's dtype."""
        index = self._variance_index(model)
        s = t - 1
        beta, _ = model.step_variances(t, s)  # beta_{t|t-1} = beta_t (1 - abar_0 at t = 0)
        sigma2 = model.step_log_variances(t, s)[index].to(torch.float64).exp()
        w = beta**2 / (2.0 * sigma2 * (1.0 - beta) * (1.0 - model.abar_at(t)))
        return w.to(model.alphas_cumprod.dtype)
