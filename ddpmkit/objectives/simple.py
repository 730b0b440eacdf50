"""L_simple with a loss weighting (Ho et al. 2020), and L_hybrid (Nichol & Dhariwal 2021)."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from ddpmkit.core.component import Params
from ddpmkit.core.errors import ConfigError
from ddpmkit.core.model import DiffusionModel, randn
from ddpmkit.core.training import Draws, Generators, LossWeighting, TrainingObjective
from ddpmkit.core.values import Conditioning


class SimpleObjective(TrainingObjective):
    """L_simple (Ho et al. 2020, eq. 14 and Algorithm 1), each example's error weighted by a
    :class:`~ddpmkit.LossWeighting` (none: the plain mean squared error).

    The network regresses the parameterization's target (for eps, L_simple exactly); the
    squared error is averaged over each example's elements (the paper sums them: a constant
    factor). A weighting's w_t applies to the error in eps whatever the network predicts.
    """

    def __init__(
        self, params: Params | None = None, *, weighting: LossWeighting | None = None
    ) -> None:
        super().__init__(params)
        self.weighting = weighting

    def check_distributed(self) -> None:
        """A weighting that learns from the losses it observes would see one shard each."""
        if self.weighting is not None and self.weighting.observes:
            raise ConfigError(
                "train.weighting: a weighting that learns from the losses it observes "
                "(importance sampling) is not supported in multi-process training yet"
            )

    def draw(
        self,
        model: DiffusionModel,
        batch_size: int,
        example_shape: tuple[int, ...],
        generators: Generators,
    ) -> Draws:
        """Algorithm 1, lines 3-4: ``t`` and ``eps``, and the weighting's ``correction``."""
        # line 3: t ~ Uniform({1, ..., T}) (indices 0..T-1), or the weighting's law
        if self.weighting is not None:
            t, correction = self.weighting.sample_t(batch_size, model, generators.indices)
        else:
            t = torch.randint(0, model.T, (batch_size,), generator=generators.indices)
        # line 4: eps ~ N(0, I)
        eps = randn((batch_size, *example_shape), generator=generators.noise)
        if self.weighting is not None:
            return {"t": t, "eps": eps, "correction": correction}
        return {"t": t, "eps": eps}

    def loss(
        self, model: DiffusionModel, x0: torch.Tensor, cond: Conditioning | None, draws: Draws
    ) -> torch.Tensor:
        """Algorithm 1, line 5: the batch mean of each example's weighted error at ``t`` and
        ``eps``, times its ``correction`` (as the weighting's ``sample_t`` returns it)."""
        t, eps, correction = draws["t"], draws["eps"], draws.get("correction")
        channels = x0.shape[1]
        # regress the parameterization's target at x_t = sqrt(abar) x0 + sqrt(1-abar) eps
        alpha, sigma = model.alpha_sigma(t, x0.ndim)
        x_t = model.q_sample(x0, t, eps)
        target = model.parameterization.target(x0, eps, alpha, sigma)
        output = model.denoiser(x_t, t, cond)
        # (a view of the first C channels only when there are more: a slice costs a copy in
        # the backward pass)
        mean_output = output[:, :channels] if output.shape[1] > channels else output
        vlb = self.vlb(model, x0, x_t, t, output)
        if self.weighting is None and vlb is None and correction is None:
            # unweighted: the mean over examples of their means is the mean of every element,
            # one fused kernel each way
            return nn.functional.mse_loss(mean_output.float(), target.float())
        # the squared error per example (mse_loss's fused kernels, the same numbers as
        # (output - target).pow(2))
        squared = nn.functional.mse_loss(mean_output.float(), target.float(), reduction="none")
        error = squared.flatten(1).mean(dim=1)
        if self.weighting is not None:
            factor = model.parameterization.eps_error_factor(alpha, sigma).flatten()
            error = error * (self.weighting.weights(t, model).to(error.device) * factor).float()
        if vlb is not None:
            error = error + vlb
        if self.weighting is not None and self.weighting.observes:
            self.weighting.observe(t.cpu(), error.detach().cpu())
        return error.mean() if correction is None else (error * correction).mean()

    def vlb(
        self,
        model: DiffusionModel,
        x0: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        output: torch.Tensor,
    ) -> torch.Tensor | None:
        """A term added to each example's error (none for L_simple)."""
        return None


class HybridParams(Params):
    """Parameters of L_hybrid: the weight lambda of its VLB term."""

    vlb_weight: float = Field(
        0.001, gt=0, description="lambda of L_simple + lambda L_vlb (0.001 in Nichol & Dhariwal)."
    )


class HybridObjective(SimpleObjective):
    """L_hybrid = L_simple + lambda L_vlb (Nichol & Dhariwal 2021, section 3.1): L_vlb = T L_t
    in bits per dimension, with the mean's gradient stopped, trains a learned variance."""

    Params = HybridParams
    params: HybridParams

    def vlb(
        self,
        model: DiffusionModel,
        x0: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        output: torch.Tensor,
    ) -> torch.Tensor:
        """lambda T L_t per example in bits per dimension, L_t from the variance channels."""
        channels = x0.shape[1]
        # stop-gradient on the mean: the VLB term trains the variance channels only
        frozen = torch.cat([output[:, :channels].detach(), output[:, channels:]], dim=1)
        term = model.vlb_term(x0, x_t, t, model.prediction_from_output(frozen, x_t, t))
        return self.params.vlb_weight * model.T * model.bits_per_dim(term, x0)
