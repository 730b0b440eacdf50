"""Adversarial training of the DDGAN generator (Xiao et al. 2022, section 3.2 and eq. 6-8)."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from ddpmkit import (
    CheckContext,
    Conditioning,
    ConfigError,
    DiffusionModel,
    Draws,
    Generators,
    Params,
    TrainingObjective,
    column,
    randn,
)
from ddpmkit_ddgan.discriminator import Discriminator
from ddpmkit_ddgan.generator import generator_of


class DDGANObjectiveParams(Params):
    """Parameters of the ``ddgan`` training objective (the discriminator and its optimizer)."""

    width: int = Field(
        64, ge=1, le=4096, description="Discriminator width (channels or hidden units)."
    )
    levels: int = Field(2, ge=0, le=16, description="Discriminator downsampling blocks (images).")
    lr: float = Field(1.25e-4, gt=0, description="Discriminator learning rate (Adam).")
    adam_betas: tuple[float, float] = Field(
        (0.5, 0.9), description="Discriminator Adam (beta1, beta2), as in DDGAN."
    )
    r1_gamma: float = Field(
        0.05, ge=0, description="R1 penalty weight gamma / 2 * ||grad_x D(real)||^2 (0: off)."
    )
    r1_every: int = Field(
        4,
        ge=1,
        le=1_000_000,
        description=(
            "Apply the R1 penalty every k-th step, weighted by k (lazy regularisation, "
            "Karras et al. 2020): the same penalty on average for a k-th of its cost."
        ),
    )


class DDGANObjective(TrainingObjective):
    """One discriminator step, then the generator's non-saturating loss (Xiao et al. 2022).

    Per example: t ~ U{0..T-1}; the real pair is x_{t-1} ~ q(x_{t-1} | x_0) (x_0 itself at
    t = 0) and x_t ~ q(x_t | x_{t-1}); the fake x_{t-1}' ~ q(x_{t-1} | x_t, x0') with
    x0' = G(x_t, z, t). The discriminator descends softplus(-D(real)) + softplus(D(fake)) +
    gamma/2 ||grad D(real)||^2 (the R1 penalty, every ``r1_every`` steps), then the
    generator's loss is
    softplus(-D(fake)), which the trainer back-propagates into the model.
    """

    Params = DDGANObjectiveParams
    params: DDGANObjectiveParams
    autocast = False  # it runs its own networks and updates, in fp32

    def __init__(self, params: DDGANObjectiveParams | None = None) -> None:
        super().__init__(params)
        self.discriminator: Discriminator | None = None
        self.optimizer: torch.optim.Adam | None = None
        self._metrics: dict[str, float] = {}
        self._steps = 0

    def check(self, context: CheckContext) -> None:
        """The objective's own rules, then: it trains without conditions, and the denoiser
        must be a ``ddgan-generator``."""
        super().check(context)
        if context.model.conditioner is not None:
            raise ConfigError("the objective trains without conditions; remove [conditioner]")
        generator_of(context.model, "objective ddgan")

    def check_distributed(self) -> None:
        """Each process would step a discriminator of its own on its shard: not yet."""
        raise ConfigError(
            "train.objective: adversarial training (ddgan) is not supported in multi-process "
            "training yet"
        )

    def setup(self, model: DiffusionModel, data_shape: tuple[int, ...]) -> None:
        """Build the discriminator on the model's device, and its Adam optimizer."""
        p = self.params
        device = model.alphas_cumprod.device
        self.discriminator = Discriminator(data_shape, p.width, p.levels).to(device)
        self.optimizer = torch.optim.Adam(
            self.discriminator.parameters(), lr=p.lr, betas=p.adam_betas
        )

    def draw(
        self,
        model: DiffusionModel,
        batch_size: int,
        example_shape: tuple[int, ...],
        generators: Generators,
    ) -> Draws:
        """t ~ U{0..T-1}; the noises of x_{t-1} and x_t, the generator's z, the fake's noise."""
        z_dim = generator_of(model, "objective ddgan").z_dim
        shape = (batch_size, *example_shape)
        t = torch.randint(0, model.T, (batch_size,), generator=generators.indices)
        eps_prev = randn(shape, generator=generators.noise)
        eps_t = randn(shape, generator=generators.noise)
        z = randn((batch_size, z_dim), generator=generators.noise)
        eps_fake = randn(shape, generator=generators.noise)
        return {"t": t, "eps_prev": eps_prev, "eps_t": eps_t, "z": z, "eps_fake": eps_fake}

    def loss(
        self, model: DiffusionModel, x0: torch.Tensor, cond: Conditioning | None, draws: Draws
    ) -> torch.Tensor:
        """Take the discriminator's step; return the generator's loss."""
        D, optimizer = self.discriminator, self.optimizer
        if D is None or optimizer is None:
            raise RuntimeError("ddgan: setup() was not called")
        device, t = x0.device, draws["t"]
        x_prev, x_t = real_pair(model, x0, t, draws["eps_prev"], draws["eps_t"])
        # the fake: x0' = G(x_t, z, t), then x_{t-1}' ~ q(x_{t-1} | x_t, x0') (eq. 5)
        x0_fake = model.predict(x_t, t, Conditioning(embedding=draws["z"])).x0
        mean, variance, _ = model.q_posterior(x0_fake, x_t, t)
        fake = mean + variance.sqrt() * draws["eps_fake"]

        # discriminator step: softplus(-D(real)) + softplus(D(fake)) + gamma/2 R1
        p = self.params
        regularize = p.r1_gamma > 0 and self._steps % p.r1_every == 0
        optimizer.zero_grad(set_to_none=True)
        real = x_prev.detach().requires_grad_(regularize)
        logits_real = D(real, x_t, t)
        d_loss = nn.functional.softplus(-logits_real).mean()
        d_loss = d_loss + nn.functional.softplus(D(fake.detach(), x_t, t)).mean()
        r1 = torch.zeros((), device=device)
        if regularize:
            (grad,) = torch.autograd.grad(logits_real.sum(), real, create_graph=True)
            r1 = grad.pow(2).flatten(1).sum(1).mean()
            d_loss = d_loss + 0.5 * p.r1_gamma * p.r1_every * r1
        d_loss.backward()
        optimizer.step()
        self._steps += 1

        # the generator's non-saturating loss against the updated discriminator
        g_loss = nn.functional.softplus(-D(fake, x_t, t)).mean()
        self._metrics = {"d_loss": d_loss.item(), "g_loss": g_loss.item()}
        if regularize:
            self._metrics["r1"] = r1.item()
        return g_loss

    def metrics(self) -> dict[str, float]:
        """The last step's discriminator loss, generator loss and R1 penalty."""
        return dict(self._metrics)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The discriminator's weights and its Adam moments."""
        if self.discriminator is None or self.optimizer is None:
            return {}
        state = {f"disc.{k}": v for k, v in self.discriminator.state_dict().items()}
        state["steps"] = torch.tensor(self._steps)
        for index, moments in self.optimizer.state_dict()["state"].items():
            for key, value in moments.items():
                state[f"adam.{index}.{key}"] = torch.as_tensor(value)
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state_dict` (after :meth:`setup`)."""
        if self.discriminator is None or self.optimizer is None:
            raise RuntimeError("ddgan: setup() must come before load_state_dict()")
        self._steps = int(state["steps"])
        weights = {k[5:]: v for k, v in state.items() if k.startswith("disc.")}
        self.discriminator.load_state_dict(weights)
        moments: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in state.items():
            if key.startswith("adam."):
                index, name = key[5:].split(".", 1)
                moments.setdefault(int(index), {})[name] = value
        groups = self.optimizer.state_dict()["param_groups"]
        self.optimizer.load_state_dict({"state": moments, "param_groups": groups})


def real_pair(
    model: DiffusionModel,
    x0: torch.Tensor,
    t: torch.Tensor,
    eps_prev: torch.Tensor,
    eps_t: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_{t-1}, x_t)`` ~ q(x_{t-1}, x_t | x_0): x_{t-1} ~ q(x_{t-1} | x_0) (x_0 itself at
    t = 0), then x_t ~ q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I) (Ho et al.
    eq. 4 and 2), with standard normal noises ``eps_prev`` and ``eps_t``."""
    s = t - 1
    abar_s = column(model.abar_at(s).to(x0.dtype), x0.ndim)
    x_prev = abar_s.sqrt() * x0 + (1 - abar_s).sqrt() * eps_prev
    beta = column(model.step_variances(t, s)[0].to(x0.dtype), x0.ndim)
    x_t = (1 - beta).sqrt() * x_prev + beta.sqrt() * eps_t
    return x_prev, x_t
