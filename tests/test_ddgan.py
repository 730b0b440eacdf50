"""Denoising diffusion GANs (Xiao et al. 2022): generator, sampler, objective, pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import ddpmkit
from ddpmkit import CheckContext, ConfigError, DiffusionModel, Params
from ddpmkit.app.cli import main
from ddpmkit.core.checkpoint import load_checkpoint
from ddpmkit_ddgan import real_pair

# DDGAN's own T = 4 schedule: beta from the VP SDE (beta_min 0.1, beta_max 20), Xiao et al.
BETAS = [0.47825530296187846, 0.8492060043167428, 0.9564177091531395, 0.987403901151003]
MU, S2 = torch.tensor([0.7, -0.4]), 0.09  # data N(MU, S2 I)


class ExactPosteriorParams(Params):
    in_channels: int = 2
    out_channels: int | None = None
    cond_embed_dim: int = 2


class ExactPosterior(ddpmkit.Denoiser):
    """x0' = a sample of q(x_0 | x_t) for data N(MU, S2 I), with z as its noise: the
    generator DDGAN's adversarial loss is minimised by (Xiao et al. 2022, eq. 5)."""

    Params = ExactPosteriorParams

    def bind(self, schedule: ddpmkit.NoiseSchedule, parameterization: object) -> None:
        self.abar = schedule.alphas_cumprod.float()

    @property
    def in_channels(self) -> int:
        return 2

    @property
    def out_channels(self) -> int:
        return 2

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: object = None) -> torch.Tensor:
        abar = self.abar[t].unsqueeze(1)
        alpha, var = abar.sqrt(), 1 - abar
        gain = alpha * S2 / (abar * S2 + var)
        mean = MU + gain * (x_t - alpha * MU)
        std = (S2 * var / (abar * S2 + var)).sqrt()
        return mean + std * cond.embedding  # type: ignore[attr-defined]


SCHEDULES = {
    "betas": {"betas": BETAS},
    "cosine": {"timesteps": 4},
    "sigmoid": {"timesteps": 4},
}


@pytest.fixture(params=sorted(SCHEDULES))
def exact_model(request: pytest.FixtureRequest) -> DiffusionModel:
    """A DDGAN whose generator is exact, on each bundled schedule that ends in noise at T = 4."""
    schedule = ddpmkit.create("schedule", request.param, **SCHEDULES[request.param])
    ddpmkit.register("denoiser", "exact-posterior")(ExactPosterior)
    try:
        generator = ddpmkit.create(
            "denoiser",
            "ddgan-generator",
            in_channels=2,
            z_dim=2,
            backbone={"type": "exact-posterior"},
        )
    finally:
        ddpmkit.core.registry.unregister("denoiser", "exact-posterior")
    return DiffusionModel(
        schedule,
        generator,
        ddpmkit.create("parameterization", "x0"),
        decoder="gaussian",
    )


def test_sampler_with_the_exact_posterior_generator_draws_the_data(exact_model) -> None:
    """x_{t-1} ~ q(x_{t-1} | x_t, x0') with x0' ~ q(x_0 | x_t) is exact at every step, so four
    steps give N(MU, S2 I) exactly: the sample moments agree to a few standard errors."""
    n = 40000
    calls: list[int] = []
    exact_model.denoiser.register_forward_hook(lambda *_: calls.append(1))
    x = ddpmkit.create("sampler", "ddgan").sample(
        exact_model, (n, 2), generator=torch.Generator().manual_seed(0)
    )
    assert len(calls) == 4  # one network call per step, T = 4
    # standard error of the mean sqrt(S2 / n) = 0.0015; of the variance S2 sqrt(2 / n) = 6e-4
    torch.testing.assert_close(x.mean(0), MU, atol=0.006, rtol=0)
    torch.testing.assert_close(x.var(0), torch.full((2,), S2), atol=0.0025, rtol=0)
    assert abs(float(torch.cov(x.T)[0, 1])) < 0.0025
    again = ddpmkit.create("sampler", "ddgan").sample(
        exact_model, (n, 2), generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(x, again)


def test_real_pair_has_the_forward_marginals() -> None:
    """x_{t-1} ~ q(x_{t-1} | x_0) then x_t ~ q(x_t | x_{t-1}) gives x_t ~ q(x_t | x_0) and the
    pair's covariance sqrt(alpha_t) (1 - abar_{t-1}) (Ho et al. eq. 2, 4)."""
    model = DiffusionModel(
        ddpmkit.create("schedule", "betas", betas=BETAS),
        ddpmkit.create("denoiser", "mlp", in_channels=2),
        ddpmkit.create("parameterization", "x0"),
        decoder="gaussian",
    )
    n = 100000
    x0 = torch.tensor([1.0, -2.0]).expand(n, 2)
    abar = torch.tensor(BETAS).neg().add(1).cumprod(0)
    for t in range(4):
        gen = torch.Generator().manual_seed(t)
        eps_prev, eps_t = torch.randn(2, n, 2, generator=gen)
        x_prev, x_t = real_pair(model, x0, torch.full((n,), t), eps_prev, eps_t)
        abar_prev = abar[t - 1] if t > 0 else torch.tensor(1.0)
        torch.testing.assert_close(x_t.mean(0), abar[t].sqrt() * x0[0], atol=0.01, rtol=0)
        torch.testing.assert_close(x_t.var(0), (1 - abar[t]).expand(2), atol=0.01, rtol=0)
        cov = ((x_prev - x_prev.mean(0)) * (x_t - x_t.mean(0))).mean(0)
        expected = (1 - BETAS[t]) ** 0.5 * (1 - abar_prev)
        torch.testing.assert_close(cov, expected.expand(2).float(), atol=0.01, rtol=0)


def test_objective_steps_the_discriminator_and_returns_the_generator_loss() -> None:
    torch.manual_seed(0)
    model = DiffusionModel(
        ddpmkit.create("schedule", "betas", betas=BETAS),
        ddpmkit.create(
            "denoiser", "ddgan-generator", in_channels=2, z_dim=4, backbone={"type": "mlp"}
        ),
        ddpmkit.create("parameterization", "x0"),
        decoder="gaussian",
    )
    objective = ddpmkit.create("objective", "ddgan", width=32)
    objective.check(CheckContext(model=model))
    objective.setup(model, (2,))
    before = {k: v.clone() for k, v in objective.discriminator.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    loss = objective.batch_loss(model, torch.randn(64, 2), generator=generator)
    assert loss.ndim == 0 and torch.isfinite(loss)
    after = objective.discriminator.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before)  # one Adam step
    loss.backward()
    assert all(p.grad is not None for p in model.denoiser.parameters())
    assert set(objective.metrics()) == {"d_loss", "g_loss", "r1"}  # R1 on step 0
    # the state round-trips into a fresh objective
    state = objective.state_dict()
    fresh = ddpmkit.create("objective", "ddgan", width=32)
    fresh.setup(model, (2,))
    fresh.load_state_dict(state)
    assert all(torch.equal(state[k], fresh.state_dict()[k]) for k in state)


TOY = """
seed = 1
device = "cpu"

[data]
type = "gmm"
num_examples = 256

[schedule]
type = "betas"
betas = {betas}

[parameterization]
type = "x0"

[denoiser]
type = "ddgan-generator"
z_dim = 4
backbone = {{ type = "mlp", hidden = 32, layers = 2 }}

[train]
steps = 6
batch_size = 16
checkpoint_every = 2
keep_checkpoints = 4

[train.objective]
type = "ddgan"
width = 32

[sample]
num_samples = 32
batch_size = 32

[sample.sampler]
type = "ddgan"

[output]
dir = "{runs}"
name = "toy"
"""


def toy_pipeline(tmp_path: Path) -> Path:
    path = tmp_path / "ddgan.toml"
    path.write_text(TOY.format(betas=BETAS, runs=tmp_path / "runs"))
    return path


def test_pipeline_trains_and_resumes_a_ddgan_exactly(tmp_path: Path) -> None:
    """6 steps at once equal 4 steps, stop, resume to 6: the discriminator and its Adam state
    are in the checkpoint."""
    path = toy_pipeline(tmp_path)
    assert main(["run", str(path), "--quiet", "--set", "output.name='once'"]) == 0
    split = ["--set", "output.name='split'"]
    assert main(["run", str(path), "--quiet", *split, "--set", "train.steps=4"]) == 0
    assert main(["run", str(path), "--quiet", *split, "--resume"]) == 0
    a, _ = load_checkpoint(tmp_path / "runs/once/checkpoints/step-0000006.safetensors")
    b, _ = load_checkpoint(tmp_path / "runs/split/checkpoints/step-0000006.safetensors")
    assert any(k.startswith("objective.disc.") for k in a)
    assert a.keys() == b.keys() and [k for k in a if not torch.equal(a[k], b[k])] == []
    assert (tmp_path / "runs/once/samples.png").exists()


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            'type = "ddgan-generator"',
            'type = "mlp"',
            "needs denoiser ddgan-generator, not MLPDenoiser",
        ),
        ("[train.objective]", "vlb_weight = 0.1\n\n[train.objective]", "train.vlb_weight"),
        ('[sample.sampler]\ntype = "ddgan"', '[sample.sampler]\ntype = "ddim"\nsteps = 4', None),
    ],
)
def test_pipeline_checks(tmp_path: Path, capsys, old: str, new: str, message: str | None) -> None:
    path = toy_pipeline(tmp_path)
    text = path.read_text()
    assert old in text
    if old.startswith('type = "ddgan-generator"'):
        text = text.replace('z_dim = 4\nbackbone = { type = "mlp", hidden = 32, layers = 2 }', "")
    path.write_text(text.replace(old, new))
    code = main(["validate", str(path)])
    if message is None:  # another sampler works with the generator (it draws z itself)
        assert code == 0
    else:
        assert code == 2 and message in capsys.readouterr().err


def test_ddgan_sampler_refuses_another_denoiser() -> None:
    model = DiffusionModel(
        ddpmkit.create("schedule", "betas", betas=BETAS),
        ddpmkit.create("denoiser", "mlp", in_channels=2),
        ddpmkit.create("parameterization", "x0"),
    )
    with pytest.raises(ConfigError, match="sampler ddgan needs denoiser ddgan-generator"):
        ddpmkit.create("sampler", "ddgan").check(CheckContext(model=model))
