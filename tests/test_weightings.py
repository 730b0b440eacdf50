"""Loss weightings: simple, vlb (Ho et al.), p2 (Choi et al.), min-snr (Hang et al.) and
importance sampling of t (Nichol & Dhariwal), against hand-computed values and identities."""

from __future__ import annotations

import math
from collections import deque

import pytest
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

import ddpmkit
from ddpmkit import (
    CheckContext,
    Conditioning,
    ConfigError,
    Denoiser,
    DiffusionModel,
    Prediction,
    column,
)
from ddpmkit_weightings import ImportanceWeighting, VLBWeighting

T10 = 10
INDICES = [0, 3, 7]  # a high-SNR, a middle and a low-SNR step of the 10-step cosine schedule


def cosine_abar(T: int, s: float = 0.008) -> list[float]:
    """abar at indices 0..T-1 by hand (Nichol & Dhariwal eq. 17, before the beta clip, which
    only changes the last step)."""

    def f(i: int) -> float:
        return math.cos((i / T + s) / (1 + s) * math.pi / 2) ** 2

    return [f(i + 1) / f(0) for i in range(T)]


ABAR = cosine_abar(T10)


class Wobble(Denoiser):
    """A fixed, imperfect network: output = 0.6 tanh(x_t) + 0.01 t (any data shape)."""

    @property
    def in_channels(self) -> int:
        return 2

    @property
    def out_channels(self) -> int:
        return 2

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning | None = None
    ) -> torch.Tensor:
        return 0.6 * torch.tanh(x_t) + 0.01 * column(t.to(x_t.dtype), x_t.ndim)


def make_model(
    timesteps: int = T10,
    parameterization: str = "eps",
    variance: str | None = None,
    decoder: ddpmkit.Decoder = "gaussian",
) -> DiffusionModel:
    return DiffusionModel(
        ddpmkit.create("schedule", "cosine", timesteps=timesteps),
        Wobble(),
        ddpmkit.create("parameterization", parameterization),
        variance=ddpmkit.create("variance", variance) if variance else None,
        decoder=decoder,
    ).double()


def weights(name: str, t: list[int], model: DiffusionModel, **params: float) -> list[float]:
    w = ddpmkit.create("weighting", name, **params).weights(torch.tensor(t), model)
    assert w.shape == (len(t),) and w.dtype == torch.float64  # the (double) model's dtype
    return [float(v) for v in w]


# -- closed forms at a few t of the cosine schedule --------------------------------------------


def test_the_hand_schedule_is_the_cosine_schedule() -> None:
    model = make_model()
    assert model.alphas_cumprod64[:-1].tolist() == pytest.approx(ABAR[:-1], rel=1e-12)
    assert ABAR[0] == pytest.approx(0.9720927371, rel=1e-9)  # SNR 34.8
    assert ABAR[3] == pytest.approx(0.6474782111, rel=1e-9)  # SNR 1.84
    assert ABAR[7] == pytest.approx(0.0940456127, rel=1e-9)  # SNR 0.104


def test_simple_is_one() -> None:
    model = make_model()
    assert weights("simple", INDICES, model) == [1.0, 1.0, 1.0]
    # a float32 model gets float32 weights on the device of t
    w = ddpmkit.create("weighting", "simple").weights(torch.tensor(INDICES), model.float())
    assert w.dtype == torch.float32 and w.tolist() == [1.0, 1.0, 1.0]


def hand_vlb(t: int, small: bool) -> float:
    """lambda_t = beta^2 / (2 sigma^2 alpha (1 - abar)) with Ho et al.'s clipped variances."""
    abar, abar_prev = ABAR[t], ABAR[t - 1] if t > 0 else 1.0
    beta = 1 - abar / abar_prev
    beta_tilde = (1 - abar_prev) / (1 - abar) * beta
    floor = (1 - ABAR[0]) / (1 - ABAR[1]) * (1 - ABAR[1] / ABAR[0])  # beta~ at index 1
    sigma2 = max(beta_tilde if small else beta, floor)
    return beta**2 / (2 * sigma2 * (1 - beta) * (1 - abar))


@pytest.mark.parametrize("variance", [None, "fixed-large", "fixed-small"])
def test_vlb_weight_by_hand(variance: str | None) -> None:
    small = variance == "fixed-small"
    expected = [hand_vlb(t, small) for t in INDICES]
    # rel 1e-7: the model keeps the clip floor beta~_1 as a float32 buffer
    assert weights("vlb", INDICES, make_model(variance=variance)) == pytest.approx(expected, 1e-7)
    if not small:
        # sigma^2 = beta: lambda_t = beta_t / (2 alpha_t (1 - abar_t)); at t = 0, 1 / (2 abar_0)
        assert expected[0] == pytest.approx(1 / (2 * ABAR[0]), rel=1e-12)
        assert expected[1] == pytest.approx(0.3054374, rel=1e-6)
    else:
        # t = 0 uses the clipped variance beta~_1; for t > 0, beta~_t < beta_t: larger weights
        assert all(
            a > b for a, b in zip(expected, [hand_vlb(t, False) for t in INDICES], strict=True)
        )


@pytest.mark.parametrize("variance", ["learned-range", "analytic"])
def test_vlb_needs_a_fixed_variance(variance: str) -> None:
    model = make_model(variance=variance)
    for name in ("vlb", "importance"):
        weighting = ddpmkit.create("weighting", name)
        with pytest.raises(ConfigError, match="fixed reverse variance"):
            weighting.weights(torch.tensor([1]), model)
        assert isinstance(weighting, VLBWeighting)
        with pytest.raises(ConfigError, match="hybrid loss"):
            weighting.check(CheckContext(model=model))
    ddpmkit.create("weighting", "vlb").check(CheckContext(model=make_model(variance="fixed-small")))


def test_p2_by_hand_and_special_cases() -> None:
    model = make_model()
    snr = [a / (1 - a) for a in (ABAR[t] for t in INDICES)]
    got = weights("p2", INDICES, model, k=2.0, gamma=0.5)
    assert got == pytest.approx([(2 + s) ** -0.5 for s in snr], rel=1e-9)
    # the defaults k = gamma = 1: 1 / (1 + SNR) = 1 - abar_t
    assert weights("p2", INDICES, model) == pytest.approx([1 - ABAR[t] for t in INDICES], 1e-9)
    # gamma = 0 is L_simple, at every t
    all_t = list(range(T10))
    assert weights("p2", all_t, model, k=3.0, gamma=0.0) == weights("simple", all_t, model)


def test_min_snr_by_hand_and_special_cases() -> None:
    model = make_model()
    # SNR = 34.8, 1.84, 0.104: only index 0 is clamped, to gamma / SNR = 5 / 34.83
    assert weights("min-snr", INDICES, model) == pytest.approx([0.1435421, 1.0, 1.0], rel=1e-6)
    snr0 = ABAR[0] / (1 - ABAR[0])
    assert weights("min-snr", [0], model, gamma=2.5) == pytest.approx([2.5 / snr0], rel=1e-9)
    # gamma above every SNR: L_simple
    all_t = list(range(T10))
    assert weights("min-snr", all_t, model, gamma=35.0) == weights("simple", all_t, model)


@pytest.mark.parametrize("name", ["eps", "x0", "v"])
def test_min_snr_gives_the_papers_weight_for_each_parameterization(name: str) -> None:
    """w_t f_t, the weight on the network's own squared error, is Hang et al.'s."""
    model = make_model(timesteps=1000)
    t = torch.arange(1000)
    snr = model.schedule.snr
    gamma = 5.0
    alpha, sigma = model.alpha_sigma(t, 1)
    factor = ddpmkit.create("parameterization", name).eps_error_factor(alpha, sigma)
    got = ddpmkit.create("weighting", "min-snr", gamma=gamma).weights(t, model) * factor
    clamped = snr.clamp(max=gamma)
    expected = {"eps": clamped / snr, "x0": clamped, "v": clamped / (snr + 1)}[name]
    assert (snr > gamma).any() and (snr < gamma).any()  # both branches are exercised
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)


# -- the VLB identity --------------------------------------------------------------------------


def draw(t: list[int]) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(len(t), 2, 2, 2, generator=gen, dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    return x0, eps, torch.tensor(t)


def weighted_loss(
    model: DiffusionModel,
    x0: torch.Tensor,
    t: torch.Tensor,
    eps: torch.Tensor,
    weighting: ddpmkit.LossWeighting,
) -> torch.Tensor:
    """L_simple weighted by ``weighting`` at the given t and eps (no correction factor)."""
    objective = ddpmkit.SimpleObjective(weighting=weighting)
    return objective.loss(model, x0, None, {"t": t, "eps": eps})


@pytest.mark.parametrize("variance", [None, "fixed-large", "fixed-small"])
def test_vlb_weight_times_error_is_the_kl(variance: str | None) -> None:
    """lambda_t ||eps - eps_hat||^2 d = L_{t-1} - C_t, C_t the theta-free variance term."""
    model = make_model(timesteps=20, variance=variance)
    x0, eps, t = draw([0, 1, 2, 5, 10, 18, 19])
    x_t = model.q_sample(x0, t, eps)
    pred = model.predict(x_t, t)
    perfect = Prediction(eps=eps, x0=x0, output=eps)  # the same variance, the true mean
    kl = model.vlb_term(x0, x_t, t, pred)
    const = model.vlb_term(x0, x_t, t, perfect)
    d = x0[0].numel()
    w = ddpmkit.create("weighting", "vlb").weights(t, model)
    squared = (pred.eps - eps).pow(2).flatten(1).mean(1)
    assert (kl - const > 1e-3).all()  # the toy network is wrong at every t
    # rtol 1e-6: the model keeps sqrt(abar) (used by q_sample and predict) as float32 buffers
    torch.testing.assert_close(w * squared * d, kl - const, rtol=1e-6, atol=0)
    if variance == "fixed-small":  # sigma^2 = beta~: the KL is exactly the weighted error
        torch.testing.assert_close(w[1:] * squared[1:] * d, kl[1:], rtol=1e-6, atol=0)
        torch.testing.assert_close(const[1:], torch.zeros(6, dtype=torch.float64))


@pytest.mark.parametrize("name", ["eps", "x0", "v"])
def test_the_vlb_loss_is_l_vlb_per_dimension_for_every_parameterization(name: str) -> None:
    model = make_model(timesteps=20, parameterization=name)
    x0, eps, t = draw([0, 3, 9, 19])
    x_t = model.q_sample(x0, t, eps)
    kl = model.vlb_term(x0, x_t, t, model.predict(x_t, t))
    const = model.vlb_term(x0, x_t, t, Prediction(eps=eps, x0=x0, output=eps))
    loss = weighted_loss(model, x0, t, eps, ddpmkit.create("weighting", "vlb"))
    per_dim = (kl - const) / x0[0].numel()
    # the model's error is float32
    torch.testing.assert_close(loss.double(), per_dim.mean(), rtol=1e-5, atol=0)


# -- importance sampling -------------------------------------------------------------------------


def importance(history: int = 3, uniform_prob: float = 0.1) -> ImportanceWeighting:
    w = ddpmkit.create("weighting", "importance", history=history, uniform_prob=uniform_prob)
    assert isinstance(w, ImportanceWeighting)
    return w


def warm_up(w: ImportanceWeighting, T: int) -> None:
    """Fill every history with the profile (t + 1) * [1, 1, 1] (even t) or [0, 0, 3] (odd t):
    mean L_t = t + 1 for both, but sqrt(mean L_t^2) = t + 1 and sqrt(3) (t + 1)."""
    for j in range(3):
        t = torch.arange(T)
        odd = (t % 2 == 1).double()
        pattern = (1 - odd) * 1.0 + odd * (3.0 if j == 2 else 0.0)
        w.observe(t, (t + 1) * pattern)


def hand_probabilities(T: int, u: float) -> torch.Tensor:
    rms = [(t + 1) * (math.sqrt(3) if t % 2 else 1.0) for t in range(T)]
    r = torch.tensor(rms, dtype=torch.float64)
    return (1 - u) * r / r.sum() + u / T


def test_importance_is_uniform_until_every_t_has_a_full_history() -> None:
    model = make_model(timesteps=20)
    w = importance()
    for step in range(2):
        t, correction = w.sample_t(64, model, torch.Generator().manual_seed(step))
        expected = torch.randint(0, 20, (64,), generator=torch.Generator().manual_seed(step))
        assert torch.equal(t, expected) and torch.equal(correction, torch.ones(64))
        w.observe(torch.arange(19), torch.ones(19))  # index 19 is never observed
    w.observe(torch.arange(19), torch.ones(19))  # 3 losses for 0..18, none for 19
    assert not w.warmed_up(20)
    t, correction = w.sample_t(8, model, torch.Generator().manual_seed(5))
    assert torch.equal(correction, torch.ones(8))
    w.observe(torch.tensor([19, 19, 19]), torch.ones(3))
    assert w.warmed_up(20)
    # every r_t = 1: still uniform, but now from the importance law
    torch.testing.assert_close(w.probabilities(20), torch.full((20,), 0.05, dtype=torch.float64))


def test_importance_history_is_a_ring_of_the_last_losses() -> None:
    """The vectorised update equals appending each loss in batch order to a bounded deque."""
    w = importance(history=3)
    reference = [deque[float](maxlen=3) for _ in range(6)]
    seen = [0] * 6
    gen = torch.Generator().manual_seed(0)
    for size in (1, 7, 2, 20, 5, 9):  # duplicates, and more than `history` of one t at once
        t = torch.randint(0, 6, (size,), generator=gen)
        losses = torch.rand(size, generator=gen, dtype=torch.float64)
        w.observe(t, losses)
        for index, loss in zip(t.tolist(), losses.tolist(), strict=True):
            reference[index].append(loss)
            seen[index] += 1
    state = w.state_dict()
    assert state["loss_counts"].tolist() == seen
    for index in range(6):
        stored = state["loss_history"][index, : len(reference[index])].tolist()
        assert sorted(stored) == sorted(reference[index])


def test_importance_probabilities_follow_the_second_moment() -> None:
    w = importance(uniform_prob=0.1)
    warm_up(w, 20)
    p = w.probabilities(20)
    torch.testing.assert_close(p, hand_probabilities(20, 0.1), rtol=1e-12, atol=0)
    assert p.sum().item() == pytest.approx(1.0, abs=1e-12)
    # sqrt(mean L^2), not mean L: odd t weigh sqrt(3) more than their even neighbours
    assert (p[1] - 0.005) / (p[0] - 0.005) == pytest.approx(2 * math.sqrt(3), rel=1e-9)


def test_importance_sampling_frequencies_and_unbiased_correction() -> None:
    T, u, n = 20, 0.1, 200_000
    model = make_model(timesteps=T)
    w = importance(uniform_prob=u)
    warm_up(w, T)
    gen = torch.Generator().manual_seed(1)
    draws = [w.sample_t(50_000, model, gen) for _ in range(n // 50_000)]
    t = torch.cat([d[0] for d in draws])
    correction = torch.cat([d[1] for d in draws]).double()
    p = hand_probabilities(T, u)
    # frequencies: each count is Binomial(n, p_t); |z| < 5 for all 20 cells fails with
    # probability about 20 * 5.7e-7 for a correct sampler
    counts = torch.bincount(t, minlength=T).double()
    z = (counts - n * p) / (n * p * (1 - p)).sqrt()
    assert z.abs().max() < 5, z
    torch.testing.assert_close(correction, 1 / (T * p[t]), rtol=1e-6, atol=0)
    # unbiased: E_p[L_t / (T p_t)] = mean_t L_t, for the current loss profile L_t = t + 1
    loss = torch.arange(1, T + 1, dtype=torch.float64)
    exact = (p * loss / (T * p)).sum()
    assert exact.item() == pytest.approx(loss.mean().item(), rel=1e-12)
    estimate = (correction * loss[t]).mean()
    # its standard error from the exact variance of correction * L under p
    se = math.sqrt(((p * (loss / (T * p)) ** 2).sum() - loss.mean() ** 2).item() / n)
    assert 0 < se < 0.01
    assert abs(estimate.item() - loss.mean().item()) < 5 * se


def test_importance_state_resumes_exactly() -> None:
    model = make_model(timesteps=20)
    a = importance(history=2, uniform_prob=0.01)
    warm_up(a, 20)
    a.observe(torch.tensor([4, 4, 9]), torch.tensor([7.0, 8.0, 0.5]))
    # through safetensors, as the trainer's checkpoints store it
    saved = load_tensors(save_tensors(a.state_dict()))
    assert saved["loss_history"].dtype == torch.float64 and saved["loss_counts"].dtype == torch.long
    b = importance(history=2, uniform_prob=0.01)
    b.load_state_dict(saved)
    gen_a, gen_b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for step in range(3):
        ta, ca = a.sample_t(16, model, gen_a)
        tb, cb = b.sample_t(16, model, gen_b)
        assert torch.equal(ta, tb) and torch.equal(ca, cb)
        losses = torch.rand(16, generator=torch.Generator().manual_seed(step))
        a.observe(ta, losses)
        b.observe(tb, losses)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key])
    # state_dict is a copy; {} resets
    state = a.state_dict()
    a.observe(torch.tensor([0]), torch.tensor([100.0]))
    assert not torch.equal(state["loss_history"], a.state_dict()["loss_history"])
    a.load_state_dict({})
    assert a.state_dict() == {} and not a.warmed_up(20)


def test_importance_rejects_mismatched_state() -> None:
    w = importance(history=3)
    warm_up(w, 20)
    with pytest.raises(ConfigError, match="history = 2"):
        importance(history=2).load_state_dict(w.state_dict())
    with pytest.raises(ConfigError, match="expected loss_history"):
        w.load_state_dict({"loss_history": torch.zeros(20, 3)})
    with pytest.raises(ConfigError, match="T = 10"):
        w.sample_t(4, make_model(timesteps=10), None)


def test_importance_trains_l_vlb_and_stores_the_weighted_losses() -> None:
    model = make_model(timesteps=20, variance="fixed-small")
    x0, eps, t = draw([0, 3, 9, 19])
    w = importance()
    loss = weighted_loss(model, x0, t, eps, w)
    vlb = weighted_loss(model, x0, t, eps, ddpmkit.create("weighting", "vlb"))
    assert loss.item() == vlb.item()
    # what observe stored: each example's L_{t-1} / d in nats (C_t = 0 for beta~, t > 0)
    x_t = model.q_sample(x0, t, eps)
    per_dim = model.vlb_term(x0, x_t, t, model.predict(x_t, t)) / x0[0].numel()
    stored = w.state_dict()["loss_history"][t, 0]
    torch.testing.assert_close(stored[1:], per_dim[1:], rtol=1e-5, atol=0)
    assert w.state_dict()["loss_counts"][t].tolist() == [1, 1, 1, 1]


# -- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "params", "key"),
    [
        ("p2", {"k": 0.0}, "k"),
        ("p2", {"gamma": -0.5}, "gamma"),
        ("min-snr", {"gamma": 0.0}, "gamma"),
        ("importance", {"history": 0}, "history"),
        ("importance", {"uniform_prob": 1.5}, "uniform_prob"),
        ("importance", {"uniform_prob": -0.1}, "uniform_prob"),
        ("simple", {"gamma": 1.0}, "gamma: unknown key"),
        ("vlb", {"variance": "fixed-small"}, "variance: unknown key"),
    ],
)
def test_create_validates_parameters(name: str, params: dict[str, float], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        ddpmkit.create("weighting", name, **params)


def test_every_parameter_is_documented() -> None:
    for name in ("simple", "vlb", "p2", "min-snr", "importance"):
        cls = type(ddpmkit.create("weighting", name))
        assert cls.__doc__ and cls.__module__.startswith("ddpmkit_weightings.")
        for field in cls.Params.model_fields.values():
            assert field.description
