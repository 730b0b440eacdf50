"""The bundled schedules: sigmoid, scaled-linear, an explicit list of betas, and the
zero-terminal-SNR rescale (Lin et al. 2024) that every bundled schedule offers."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

import ddpmkit
from ddpmkit import ConfigError, DiffusionModel
from ddpmkit_schedules import rescale_zero_terminal_snr

ALL = [
    ("linear", {}),
    ("cosine", {}),
    ("sigmoid", {}),
    ("sigmoid", {"start": 0.0, "end": 3.0, "tau": 0.7, "timesteps": 100}),
    ("scaled-linear", {}),
    ("scaled-linear", {"timesteps": 50}),
    ("betas", {"betas": [0.1, 0.2, 0.3]}),
]
RESCALABLE = ["linear", "cosine", "sigmoid", "scaled-linear"]


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def check_schedule(s: Any) -> None:
    abar = s.alphas_cumprod
    assert abar.dtype == torch.float64 and abar.shape == (s.T,)
    assert torch.all(abar[1:] < abar[:-1])
    assert torch.all((abar > 0) & (abar <= 1))
    # abar_t is the running product of 1 - beta_t; a beta_T near 1 (a clipped or rescaled last
    # step) loses digits in 1 - beta_T (relative error ~1e-16 / (1 - beta_T))
    prod = torch.cumprod(1 - s.betas, 0)
    torch.testing.assert_close(prod[:-1], abar[:-1], rtol=1e-12, atol=0)
    torch.testing.assert_close(prod[-1:], abar[-1:], rtol=1e-6, atol=0)
    # SNR = abar / (1 - abar) and log-SNR = its log, both strictly decreasing
    torch.testing.assert_close(s.snr, abar / (1 - abar), rtol=1e-14, atol=0)
    torch.testing.assert_close(s.log_snr, torch.log(abar) - torch.log1p(-abar), rtol=1e-9, atol=0)
    assert torch.all(torch.isfinite(s.log_snr)) and torch.all(s.log_snr[1:] < s.log_snr[:-1])


@pytest.mark.parametrize("zero_terminal_snr", [False, True])
@pytest.mark.parametrize(("name", "params"), ALL)
def test_every_schedule_decreases_strictly_in_unit_interval(
    name: str, params: dict, zero_terminal_snr: bool
) -> None:
    check_schedule(ddpmkit.create("schedule", name, zero_terminal_snr=zero_terminal_snr, **params))


def test_sigmoid_matches_jabri_et_al() -> None:
    s = ddpmkit.create("schedule", "sigmoid", timesteps=1000)
    v_start, v_end = sigmoid(-3.0), sigmoid(3.0)  # 0.04743, 0.95257

    def gamma(u: float) -> float:
        return (v_end - sigmoid(6.0 * u - 3.0)) / (v_end - v_start)

    abar = s.alphas_cumprod
    # index t is u = (t + 1) / T; the sigmoid's centre u = 1/2 gives abar = 1/2 exactly
    assert abar[499].item() == pytest.approx(0.5, rel=1e-12)
    assert abar[0].item() == pytest.approx(0.99969972, rel=1e-7)  # 1 - 0.006 * 0.04518 / 0.905
    for t in (0, 99, 249, 749, 998):
        assert abar[t].item() == pytest.approx(gamma((t + 1) / 1000), rel=1e-12)
    assert abar[-1].item() == 1e-9  # gamma(1) = 0, clipped at clip_min
    # symmetry of the sigmoid: gamma(u) + gamma(1 - u) = 1
    assert abar[249].item() + abar[749].item() == pytest.approx(1.0, rel=1e-12)

    # Chen (2023)'s variant: start 0, end 3, tau 0.7
    s = ddpmkit.create("schedule", "sigmoid", start=0.0, end=3.0, tau=0.7, timesteps=10)
    v_start, v_end = 0.5, sigmoid(3.0 / 0.7)
    for t in range(9):
        u = (t + 1) / 10
        expected = (v_end - sigmoid((3.0 * u) / 0.7)) / (v_end - v_start)
        assert s.alphas_cumprod[t].item() == pytest.approx(expected, rel=1e-12)


def test_scaled_linear_matches_stable_diffusion() -> None:
    s = ddpmkit.create("schedule", "scaled-linear")
    assert s.T == 1000
    lo, hi = math.sqrt(0.00085), math.sqrt(0.012)
    for t in (0, 1, 500, 998, 999):
        expected = (lo + t / 999 * (hi - lo)) ** 2
        assert s.betas[t].item() == pytest.approx(expected, rel=1e-10)
    assert s.betas[0].item() == pytest.approx(0.00085, rel=1e-12)
    assert s.betas[-1].item() == pytest.approx(0.012, rel=1e-12)
    # Lin et al. (2024, Table 1): Stable Diffusion ends at sqrt(abar_T) = 0.068265, SNR = 0.004682
    assert s.alphas_cumprod[-1].sqrt().item() == pytest.approx(0.068265, abs=5e-7)
    assert s.snr[-1].item() == pytest.approx(0.004682, abs=5e-7)
    # no 1000 / T scaling: the ends stay as given for any T
    short = ddpmkit.create("schedule", "scaled-linear", timesteps=3)
    mid = ((lo + hi) / 2) ** 2
    torch.testing.assert_close(
        short.betas, torch.tensor([0.00085, mid, 0.012], dtype=torch.float64), rtol=1e-12, atol=0
    )
    torch.testing.assert_close(
        short.alphas_cumprod,
        torch.tensor(
            [1 - 0.00085, (1 - 0.00085) * (1 - mid), (1 - 0.00085) * (1 - mid) * (1 - 0.012)],
            dtype=torch.float64,
        ),
        rtol=1e-14,
        atol=0,
    )


def test_betas_round_trip() -> None:
    given = [1e-4, 0.003, 0.02, 0.25, 0.5, 0.999]
    s = ddpmkit.create("schedule", "betas", betas=given)
    assert s.T == 6  # T = len(betas)
    torch.testing.assert_close(
        s.betas, torch.tensor(given, dtype=torch.float64), rtol=0, atol=1e-12
    )
    expected = math.prod(1 - b for b in given)
    assert s.alphas_cumprod[-1].item() == pytest.approx(expected, rel=1e-13)


def test_zero_terminal_snr_hand_computed() -> None:
    s = ddpmkit.create("schedule", "betas", betas=[0.1, 0.2, 0.3], zero_terminal_snr=True)
    # abar = 0.9, 0.72, 0.504: shift sqrt(abar) by sqrt(0.504), then scale it by
    # sqrt(0.9) / (sqrt(0.9) - sqrt(0.504))
    a1, a2, a3 = math.sqrt(0.9), math.sqrt(0.72), math.sqrt(0.504)
    middle = ((a2 - a3) * a1 / (a1 - a3)) ** 2
    assert middle == pytest.approx(0.303291, rel=1e-5)  # (0.138598 * 0.948683 / 0.238753)^2
    expected = [0.9, middle, 1e-10]  # the terminal 0 raised to min(middle * 1e-3, 1e-10)
    torch.testing.assert_close(
        s.alphas_cumprod, torch.tensor(expected, dtype=torch.float64), rtol=1e-14, atol=0
    )


@pytest.mark.parametrize("name", RESCALABLE)
def test_zero_terminal_snr_rescale(name: str) -> None:
    base = ddpmkit.create("schedule", name, timesteps=200)
    s = ddpmkit.create("schedule", name, timesteps=200, zero_terminal_snr=True)
    abar0, abar = base.alphas_cumprod, s.alphas_cumprod
    assert abar[0].item() == abar0[0].item()  # first step unchanged
    assert s.snr[-1].item() < 1e-9 and s.log_snr[-1].item() < -20.7  # SNR(T) ~ 0
    assert base.snr[-1].item() > 1e-9  # ... which none of the originals had
    # sqrt(abar') = (sqrt(abar) - sqrt(abar_T)) * sqrt(abar_1) / (sqrt(abar_1) - sqrt(abar_T))
    r0 = abar0.sqrt()
    expected = (r0 - r0[-1]) * r0[0] / (r0[0] - r0[-1])
    torch.testing.assert_close(abar.sqrt()[:-1], expected[:-1], rtol=1e-12, atol=1e-15)
    # sqrt(abar') is affine in sqrt(abar) on every step but the (floored) last one
    slope = (abar.sqrt()[1:-1] - abar.sqrt()[0]) / (r0[1:-1] - r0[0])
    torch.testing.assert_close(slope, slope[:1].expand_as(slope), rtol=1e-9, atol=0)
    assert slope[0].item() == pytest.approx((r0[0] / (r0[0] - r0[-1])).item(), rel=1e-9)
    # the terminal value: Algorithm 1's 0, raised to min(abar'_{T-1} * 1e-3, 1e-10)
    assert abar[-1].item() == min(abar[-2].item() * 1e-3, 1e-10)
    assert 0.999 <= s.betas[-1].item() < 1.0
    check_schedule(s)


def test_rescale_function_and_short_schedules() -> None:
    abar = torch.tensor([0.8, 0.5], dtype=torch.float64)
    # T = 2: the first step is kept, the last becomes min(0.8 * 1e-3, 1e-10)
    torch.testing.assert_close(
        rescale_zero_terminal_snr(abar), torch.tensor([0.8, 1e-10], dtype=torch.float64)
    )
    with pytest.raises(ConfigError, match="at least 2 timesteps"):
        ddpmkit.create("schedule", "scaled-linear", timesteps=1, zero_terminal_snr=True)


def test_zero_terminal_snr_model_with_v_prediction_is_finite() -> None:
    """Lin et al. train zero-terminal-SNR schedules with v: x0 = alpha x_t - sigma v stays
    bounded at t = T where the eps form (x_t - sigma eps) / alpha blows up."""
    schedule = ddpmkit.create("schedule", "cosine", timesteps=20, zero_terminal_snr=True)
    torch.manual_seed(0)
    model = DiffusionModel(
        schedule=schedule,
        denoiser=ddpmkit.create(
            "denoiser", "mlp", in_channels=2, out_channels=2, hidden=8, layers=1
        ),
        parameterization=ddpmkit.create("parameterization", "v"),
    )
    x_t = torch.randn(4, 2)
    t = torch.full((4,), 19)
    assert schedule.alphas_cumprod[-1].item() == 1e-10
    pred = model.predict(x_t, t)
    assert torch.all(torch.isfinite(pred.x0)) and torch.all(torch.isfinite(pred.eps))
    alpha, sigma = model.alpha_sigma(t, 2)
    assert sigma[0].item() == 1.0 and alpha[0].item() == pytest.approx(1e-5, rel=1e-6)
    mean, _, log_var = model.q_posterior(pred.x0, x_t, t)
    assert torch.all(torch.isfinite(mean)) and torch.all(torch.isfinite(log_var))


@pytest.mark.parametrize("name", ["linear", "cosine", "sigmoid", "scaled-linear"])
def test_zero_terminal_snr_refuses_eps(name: str) -> None:
    """Lin et al. (2024): eps cannot be learned at SNR(T) = 0; only the rescaled schedules
    count as zero-terminal (the plain cosine ends at SNR 2.4e-9 and stays allowed)."""
    plain = ddpmkit.create("schedule", name, timesteps=50)
    rescaled = ddpmkit.create("schedule", name, timesteps=50, zero_terminal_snr=True)
    assert not plain.zero_terminal_snr and rescaled.zero_terminal_snr
    eps = ddpmkit.create("parameterization", "eps")
    denoiser = ddpmkit.create("denoiser", "mlp", in_channels=2, out_channels=2, hidden=8)
    DiffusionModel(schedule=plain, denoiser=denoiser, parameterization=eps)
    with pytest.raises(ConfigError, match="eps cannot learn a zero-terminal-SNR.*use param"):
        DiffusionModel(schedule=rescaled, denoiser=denoiser, parameterization=eps)
    for name in ("v", "x0"):
        DiffusionModel(
            schedule=rescaled,
            denoiser=denoiser,
            parameterization=ddpmkit.create("parameterization", name),
        )


def test_zero_terminal_snr_eps_pipeline_fails_validation(write_pipeline, capsys) -> None:
    """`ddpmkit validate` names the problem before any work (exit 2, no traceback)."""
    from ddpmkit.app.cli import main

    path = write_pipeline(
        ("timesteps = 40\n", "timesteps = 40\nzero_terminal_snr = true\n"),
        ('type = "v"', 'type = "eps"'),
    )
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "use parameterization v" in err and "Traceback" not in err
    assert (
        main(
            [
                "validate",
                str(
                    write_pipeline(
                        ("timesteps = 40\n", "timesteps = 40\nzero_terminal_snr = true\n"),
                        name="v.toml",
                    )
                ),
            ]
        )
        == 0
    )


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("betas", {"betas": [0.1, 1.0]}, "less than 1"),
        ("betas", {"betas": [0.0, 0.1]}, "greater than 0"),
        ("betas", {"betas": [-0.1]}, "greater than 0"),
        ("betas", {"betas": []}, "at least 1"),
        ("betas", {}, "betas"),
        ("sigmoid", {"start": 3.0, "end": 3.0}, "start must be less than end"),
        ("sigmoid", {"start": 1.0, "end": -1.0}, "start must be less than end"),
        ("sigmoid", {"tau": 0.0}, "greater than 0"),
        ("sigmoid", {"clip_min": 0.5}, "clip_min"),
        ("scaled-linear", {"beta_start": 0.02, "beta_end": 0.01}, "must not exceed"),
        ("scaled-linear", {"beta_end": 1.0}, "less than 1"),
        ("cosine", {"zero_terminal_snr": "maybe"}, "zero_terminal_snr"),
    ],
)
def test_bad_parameters_are_config_errors(name: str, params: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ddpmkit.create("schedule", name, **params)
