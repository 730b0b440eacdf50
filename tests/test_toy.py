"""The toy plugin: the exact ``gmm-oracle``, the ``mlp`` denoiser, vector data, scatter plots."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ddpmkit
from ddpmkit import Conditioning, ConfigError, DiffusionModel
from ddpmkit.core.images import save_scatter
from ddpmkit_toy import GaussianMixture, GMMOracle, VectorDataset

MU = [0.4, -0.3]
SIGMA = [[0.09, 0.03], [0.03, 0.05]]
TWO_1D = {"weights": [0.3, 0.7], "means": [[-1.0], [0.8]], "stds": [0.3, 0.5]}
THREE_2D = {
    "weights": [0.5, 0.3, 0.2],
    "means": [[-1.0, 0.0], [1.0, 0.5], [0.0, -1.0]],
    "covariances": [[[0.04, 0.01], [0.01, 0.02]], [[0.02, 0.0], [0.0, 0.05]], SIGMA],
}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def bound_oracle(T: int = 100, parameterization: str = "eps", **mixture: object) -> GMMOracle:
    oracle = ddpmkit.create("denoiser", "gmm-oracle", **mixture)
    oracle.bind(
        ddpmkit.create("schedule", "linear", timesteps=T),
        ddpmkit.create("parameterization", parameterization),
    )
    return oracle


# -- the oracle -------------------------------------------------------------------------------


def test_oracle_is_the_closed_form_for_one_gaussian() -> None:
    """K = 1: x_t ~ N(a mu, C) with C = a^2 Sigma + s^2 I, so E[eps | x_t] = s C^-1 (x_t - a mu)."""
    oracle = bound_oracle(means=[MU], covariances=[SIGMA])
    t = torch.randint(0, 100, (64,), generator=gen(0))
    x_t = torch.randn(64, 2, generator=gen(1), dtype=torch.float64)
    abar = oracle.alphas_cumprod[t]
    a, s = abar.sqrt()[:, None, None], (1 - abar).sqrt()[:, None, None]
    f64 = torch.float64
    cov = a**2 * torch.tensor(SIGMA, dtype=f64) + s**2 * torch.eye(2, dtype=f64)
    rhs = (x_t - a[:, 0] * torch.tensor(MU, dtype=f64))[:, :, None]
    expected = (s * torch.linalg.solve(cov, rhs))[:, :, 0]
    torch.testing.assert_close(oracle(x_t, t), expected, rtol=1e-10, atol=1e-12)
    # float32 in, float32 out, same values up to float32 rounding
    out32 = oracle(x_t.float(), t)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32, expected.float(), rtol=1e-5, atol=1e-5)


def test_oracle_matches_monte_carlo_for_a_two_component_mixture() -> None:
    """E[eps | x_t] by self-normalised importance sampling over x_0 ~ p (1D, K = 2).

    eps(x_0) = (x_t - a x_0) / s with weights N(x_t; a x_0, s^2 I). With 200k draws the
    delta-method standard error sqrt(sum w^2 (eps - est)^2) / sum w is 6e-5 (t = 80, s ~ 1) to
    4e-3 (t = 10) here; the oracle must agree within 4 of them (the estimates share the x_0
    draws, so their errors are correlated; over seeds the z-scores are centred with sd ~ 1).
    """
    oracle = bound_oracle(**TWO_1D)
    x0 = oracle.sample(200_000, gen(2)).double()  # (M, 1)
    x_t = torch.tensor([-1.5, -0.4, 0.1, 0.6, 1.7], dtype=torch.float64)
    for index in (10, 40, 80):
        abar = oracle.alphas_cumprod[index]
        a, s = abar.sqrt(), (1 - abar).sqrt()
        eps = (x_t[None, :] - a * x0) / s  # (M, P)
        w = torch.softmax(-0.5 * eps**2, dim=0)  # N(x_t; a x_0, s^2) up to a constant
        estimate = (w * eps).sum(0)
        se = (w**2 * (eps - estimate) ** 2).sum(0).sqrt()
        got = oracle(x_t[:, None], torch.full((5,), index))[:, 0]
        assert ((got - estimate).abs() < 4 * se).all(), (index, got, estimate, se)


@pytest.mark.parametrize("parameterization", ["x0", "v"])
def test_every_parameterization_gives_the_same_prediction(parameterization: str) -> None:
    """The oracle outputs E[target | x_t] for the model's parameterization; converted back,
    eps and x0 agree with the eps oracle's (and x0 is the mixture's posterior mean)."""
    schedule = ddpmkit.create("schedule", "cosine", timesteps=200)

    def model(name: str) -> DiffusionModel:
        oracle = ddpmkit.create("denoiser", "gmm-oracle", **THREE_2D)
        return DiffusionModel(schedule, oracle, ddpmkit.create("parameterization", name))

    reference, other = model("eps"), model(parameterization)
    x_t = torch.randn(128, 2, generator=gen(3))
    t = torch.randint(0, 200, (128,), generator=gen(4))
    want, got = reference.predict(x_t, t), other.predict(x_t, t)
    # float32 conversions near t = 0 (sigma ~ 0.01) lose ~1e-5 relative on eps
    torch.testing.assert_close(got.x0, want.x0, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got.eps, want.eps, rtol=1e-3, atol=1e-3)
    abar = schedule.alphas_cumprod[t][:, None]
    posterior = reference.denoiser.mixture.posterior_mean(x_t, abar.sqrt(), (1 - abar).sqrt())
    torch.testing.assert_close(want.x0, posterior.float(), rtol=1e-4, atol=1e-4)


def test_log_prob_and_sampling_of_the_mixture() -> None:
    oracle = bound_oracle(**THREE_2D)
    x = torch.randn(50, 2, generator=gen(5))
    f64 = torch.float64
    components = torch.distributions.MultivariateNormal(
        torch.tensor(THREE_2D["means"], dtype=f64), torch.tensor(THREE_2D["covariances"], dtype=f64)
    )
    weights = torch.distributions.Categorical(torch.tensor(THREE_2D["weights"], dtype=f64))
    mixture = torch.distributions.MixtureSameFamily(weights, components)
    torch.testing.assert_close(oracle.log_prob(x), mixture.log_prob(x.double()))
    # 40k draws: the mixture mean has SE sqrt(var / n) < 0.005 per coordinate; 0.02 is 4 SE
    draws = oracle.sample(40_000, gen(6))
    assert draws.shape == (40_000, 2) and draws.dtype == torch.float32
    torch.testing.assert_close(draws.double().mean(0), mixture.mean, atol=0.02, rtol=0)
    # and the same generator seed gives the same draws
    assert torch.equal(oracle.sample(10, gen(7)), oracle.sample(10, gen(7)))


def test_default_mixture_and_isotropic_stds() -> None:
    oracle = ddpmkit.create("denoiser", "gmm-oracle")  # 8 equal modes on a circle, std 0.1
    assert (oracle.in_channels, oracle.out_channels, oracle.mixture.K) == (2, 2, 8)
    torch.testing.assert_close(oracle.mixture.covariances[3], 0.01 * torch.eye(2).double())
    stds = ddpmkit.create("denoiser", "gmm-oracle", means=[[0.0], [1.0]], stds=[0.2, 0.5])
    assert stds.mixture.covariances.flatten().tolist() == pytest.approx([0.04, 0.25])
    assert list(oracle.parameters()) == []  # nothing to train


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"weights": [1.0, 2.0], "means": [[0.0, 0.0]]}, "weights has 2 entries but"),
        ({"weights": [1.0, 0.0], "means": [[0.0], [1.0]]}, "greater than 0"),
        ({"weights": [1.0, -1.0], "means": [[0.0], [1.0]]}, "greater than 0"),
        ({"means": [[0.0, 0.0], [1.0]]}, "same length D"),
        ({"means": [[0.0, 1.0]], "covariances": [[[1.0, 2.0], [2.0, 1.0]]]}, "not positive def"),
        ({"means": [[0.0, 1.0]], "covariances": [[[1.0, 0.5], [0.0, 1.0]]]}, "not symmetric"),
        ({"means": [[0.0, 1.0]], "covariances": [[[1.0, 0.0]]]}, r"must be 2 x 2"),
        ({"means": [[0.0], [1.0]], "covariances": [[[1.0]]]}, "1 matrices, not K = 2"),
        ({"means": [[0.0]], "covariances": [[[1.0]]], "stds": [1.0]}, "not both"),
        ({"means": [[0.0], [1.0]], "stds": [1.0]}, "stds has 1 entries"),
        ({"means": [[0.0]], "stds": [0.0]}, "greater than 0"),
        ({"means": [[float("nan")]]}, "finite"),
        ({"parameterization": "score"}, "parameterization"),
    ],
)
def test_bad_mixtures_are_config_errors(params: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ddpmkit.create("denoiser", "gmm-oracle", **params)
    if "parameterization" not in params:  # the gmm data set shares the validation
        with pytest.raises(ConfigError, match=message):
            ddpmkit.create("dataset", "gmm", **params)


def test_oracle_refuses_conditions_and_needs_a_schedule() -> None:
    oracle = ddpmkit.create("denoiser", "gmm-oracle")
    with pytest.raises(RuntimeError, match="not bound"):
        oracle(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long))
    oracle.bind(
        ddpmkit.create("schedule", "linear", timesteps=50),
        ddpmkit.create("parameterization", "eps"),
    )
    t = torch.zeros(3, dtype=torch.long)
    assert oracle(torch.zeros(3, 2), t, Conditioning()).shape == (3, 2)
    # a one-hot class per row (K = 8 components by default) is accepted, nothing else
    assert oracle(torch.zeros(3, 2), t, Conditioning(embedding=torch.zeros(3, 8))).shape == (3, 2)
    with pytest.raises(ValueError, match="one-hot classes of shape"):
        oracle(torch.zeros(3, 2), t, Conditioning(embedding=torch.zeros(3, 4)))
    with pytest.raises(ValueError, match="unconditional"):
        oracle(torch.zeros(3, 2), t, Conditioning(context=torch.zeros(3, 1, 4)))
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        oracle(torch.zeros(3, 3), t)


def test_mixture_rejects_bad_tensors() -> None:
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture(torch.ones(2), torch.zeros(3, 2), torch.eye(2).expand(3, 2, 2))
    with pytest.raises(ValueError, match="positive definite"):
        GaussianMixture(torch.ones(1), torch.zeros(1, 2), torch.zeros(1, 2, 2))


# -- data sets --------------------------------------------------------------------------------

DATASETS = ["gmm", "two-moons", "swiss-roll", "checkerboard"]


@pytest.mark.parametrize("name", DATASETS)
def test_vector_datasets(name: str) -> None:
    data = ddpmkit.create("dataset", name, num_examples=500, seed=1)
    assert isinstance(data, VectorDataset)
    assert (len(data), data.shape, data.channels, data.image_size) == (500, (2,), 2, 0)
    example = data[7]
    assert example.image.shape == (2,) and example.image.dtype == torch.float32
    batch = data.batch([0, 7, -1])
    assert batch.images.shape == (3, 2) and batch.labels.shape == (3,)
    assert torch.equal(batch.images[1], example.image)
    assert torch.equal(batch.images[2], data[499].image)
    everything = data.batch(list(range(500))).images
    # roughly unit range: centred, spread of order 1
    assert everything.abs().max() < 1.5 and everything.mean(0).abs().max() < 0.35
    assert 0.2 < float(everything.std()) < 1.0
    again = ddpmkit.create("dataset", name, num_examples=500, seed=1)
    other = ddpmkit.create("dataset", name, num_examples=500, seed=2)
    assert torch.equal(again.batch(list(range(500))).images, everything)
    assert not torch.equal(other.batch(list(range(500))).images, everything)
    with pytest.raises(IndexError):
        data[500]
    with pytest.raises(IndexError):
        data.batch([0, 500])


def test_dataset_specifics() -> None:
    gmm = ddpmkit.create("dataset", "gmm", num_examples=2000, **THREE_2D)
    assert gmm.num_classes == 3 and set(gmm.labels.tolist()) == {0, 1, 2}
    # each point is nearest its own component's mean (the modes are 5+ std apart)
    nearest = torch.cdist(gmm.points, torch.tensor(THREE_2D["means"])).argmin(1)
    assert (nearest == gmm.labels).float().mean() > 0.99
    moons = ddpmkit.create("dataset", "two-moons", num_examples=1000, noise=0.0)
    assert moons.num_classes == 2 and set(moons.labels.tolist()) == {0, 1}
    # noiseless moons: radius 1/1.5 around (-1/3, -1/6) and (1/3, 1/6) after scaling
    centres = torch.tensor([[-1 / 3, -1 / 6], [1 / 3, 1 / 6]])
    radius = (moons.points - centres[moons.labels]).norm(dim=1)
    torch.testing.assert_close(radius, torch.full((1000,), 1 / 1.5), rtol=0, atol=1e-5)
    roll = ddpmkit.create("dataset", "swiss-roll", num_examples=1000, noise=0.0)
    assert float(roll.points.norm(dim=1).max()) <= 1.0 + 1e-6 and roll.num_classes == 0
    board = ddpmkit.create("dataset", "checkerboard", num_examples=2000, squares=4)
    cells = ((board.points + 1) * 2).floor().long()  # 4 squares of side 0.5 per axis
    assert ((cells.sum(1) % 2) == 0).all() and board.points.abs().max() <= 1.0
    assert len({tuple(c) for c in cells.tolist()}) == 8  # every dark square is used


# -- the MLP ----------------------------------------------------------------------------------


def test_mlp_shapes_and_conditions() -> None:
    net = ddpmkit.create("denoiser", "mlp", in_channels=3, hidden=16, layers=2, time_dim=7)
    x, t = torch.randn(5, 3), torch.tensor([0, 1, 2, 50, 999])
    assert net(x, t).shape == (5, 3) and (net.in_channels, net.out_channels) == (3, 3)
    wide = ddpmkit.create("denoiser", "mlp", in_channels=3, out_channels=6, hidden=16)
    assert wide(x, t).shape == (5, 6) and wide.out_channels == 6
    assert net(x, t, Conditioning()).shape == (5, 3)
    with pytest.raises(ValueError, match="unconditional"):
        net(x, t, Conditioning(channels=torch.zeros(5, 1)))
    with pytest.raises(ValueError, match=r"\(B, 3\)"):
        net(torch.randn(5, 2), t)
    with pytest.raises(ConfigError, match="layers"):
        ddpmkit.create("denoiser", "mlp", layers=0)


def test_mlp_learns_two_moons() -> None:
    """100 Adam steps of L_simple on two-moons: the loss (~1 = E|eps|^2 / D for an untrained
    network predicting ~0) falls to ~0.16; the mean of the last 20 steps must be below half
    that of the first 20 (~0.74), far beyond the ~0.03 step-to-step noise of a 256-batch."""
    torch.manual_seed(0)
    data = ddpmkit.create("dataset", "two-moons", num_examples=2000)
    schedule = ddpmkit.create("schedule", "linear", timesteps=100)
    model = DiffusionModel(
        schedule,
        ddpmkit.create("denoiser", "mlp", hidden=64),
        ddpmkit.create("parameterization", "eps"),
    )
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = gen(8)
    losses = []
    for _ in range(100):
        x0 = data.batch(torch.randint(0, 2000, (256,), generator=g).tolist()).images
        loss = ddpmkit.SimpleObjective().batch_loss(model, x0, generator=g)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:20])


# -- scatter plots ----------------------------------------------------------------------------


def test_save_scatter(tmp_path: Path) -> None:
    points = torch.tensor([[0.5, 0.5, 9.0], [1.0, 1.0, 9.0], [float("nan"), 0.0, 0.0]])
    reference = torch.tensor([[-1.0, -1.0, 0.0], [0.0, 0.0, 0.0]])
    path = save_scatter(points, tmp_path / "sub" / "scatter.png", reference=reference, size=64)
    assert path == tmp_path / "sub" / "scatter.png"
    assert [p.name for p in path.parent.iterdir()] == ["scatter.png"]
    with Image.open(path) as img:
        assert img.size == (64, 64) and img.mode == "RGB"
        pixels = np.asarray(img).reshape(-1, 3)
    colours = {tuple(p) for p in pixels.tolist()}
    assert (31, 119, 180) in colours and (190, 190, 190) in colours
    # one scale for both axes fitted to both sets: (-1, -1) is bottom left, (1, 1) top right
    with Image.open(path) as img:
        image = np.asarray(img)
    assert ((image[56:, :8] == (190, 190, 190)).all(axis=2)).any()
    assert ((image[:8, 56:] == (31, 119, 180)).all(axis=2)).any()
    with pytest.raises(ValueError, match="D >= 2"):
        save_scatter(torch.zeros(4, 1), tmp_path / "bad.png")


def test_scatter_of_a_mixture(tmp_path: Path) -> None:
    oracle = ddpmkit.create("denoiser", "gmm-oracle", **THREE_2D)
    path = save_scatter(oracle.sample(500, gen(9)), tmp_path / "gmm.png", size=128)
    with Image.open(path) as img:
        blue = (np.asarray(img) == (31, 119, 180)).all(axis=2).mean()
    assert 0.02 < blue < 0.5 and math.isfinite(blue)
