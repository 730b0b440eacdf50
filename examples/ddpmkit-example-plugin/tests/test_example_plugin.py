"""The example plugin's tests: the conformance kit, then the maths of each component."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import pytest
import torch

import ddpmkit
from ddpmkit.testing import (
    DATA_STD,
    GuidanceContract,
    ScheduleContract,
    reference_model,
)
from ddpmkit_example.schedule import cosine_logsnr


class TestShiftedCosine(ScheduleContract):
    name = "shifted-cosine"
    params: ClassVar[dict[str, Any]] = {"timesteps": 100, "image_size": 128}


class TestMeanIntensity(GuidanceContract):
    name = "mean-intensity"
    params: ClassVar[dict[str, Any]] = {"target": 0.5, "scale": 2.0}


def test_unshifted_is_the_clipped_cosine_schedule() -> None:
    """At image_size == base_size, abar = sigmoid(-2 log tan u) = cos^2 u exactly."""
    s = ddpmkit.create("schedule", "shifted-cosine", timesteps=50)
    t = torch.arange(1, 51, dtype=torch.float64) / 50
    t_min, t_max = math.atan(math.exp(-7.5)), math.atan(math.exp(7.5))
    expected = torch.cos(t_min + t * (t_max - t_min)) ** 2
    torch.testing.assert_close(s.alphas_cumprod, expected, rtol=1e-12, atol=1e-15)


def test_shift_moves_log_snr_by_twice_the_log_resolution_ratio() -> None:
    base = ddpmkit.create("schedule", "shifted-cosine", timesteps=50)
    big = ddpmkit.create("schedule", "shifted-cosine", timesteps=50, image_size=256)
    shift = big.log_snr - base.log_snr
    torch.testing.assert_close(shift, torch.full_like(shift, 2 * math.log(64 / 256)))
    # log SNR ends at the clipped cosine's ends plus the shift
    t = torch.tensor([1.0], dtype=torch.float64)
    torch.testing.assert_close(base.log_snr[-1:], cosine_logsnr(t, -15.0, 15.0))


def test_in_a_pipeline_image_size_is_the_data_s() -> None:
    """``wire`` answers the data's image size (a pipeline uses it where the file sets none)."""
    from ddpmkit_example import ShiftedCosineSchedule

    assert ShiftedCosineSchedule.wire(ddpmkit.BuildContext(image_size=16)) == {"image_size": 16}
    assert ShiftedCosineSchedule.wire(ddpmkit.BuildContext(image_size=0)) == {}  # vectors


def test_bad_range_names_the_problem() -> None:
    with pytest.raises(ddpmkit.ConfigError, match="logsnr_min must be smaller"):
        ddpmkit.create("schedule", "shifted-cosine", logsnr_min=2.0, logsnr_max=1.0)


def test_guidance_gradient_matches_the_closed_form() -> None:
    """On the kit's Gaussian reference model x0_hat = k x_t with k = a s^2 / (a^2 s^2 +
    sigma^2), so grad l = 2 (mean(k x_t) - target) k / N for every pixel."""
    model = reference_model("v")  # any parameterization: the model converts
    g = ddpmkit.create("guidance", "mean-intensity", target=0.3, scale=1.5)
    x = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    model = model.double()
    t = torch.tensor([2, 9, 17])
    inner = model.predict(x, t)
    guided = g.guide(model, model.predict, x, t, None)
    alpha, sigma = model.alpha_sigma(t, x.ndim)
    k = alpha * DATA_STD**2 / (alpha**2 * DATA_STD**2 + sigma**2)
    n = x[0].numel()
    mean = (k * x).flatten(1).mean(1).view(-1, 1, 1, 1)
    grad = 2 * (mean - 0.3) * k / n
    # the model keeps abar in float32 buffers: agreement to ~1e-7 relative, not 1e-15
    expected = inner.eps + 1.5 * sigma * grad
    torch.testing.assert_close(guided.eps, expected, rtol=1e-6, atol=1e-8)


def test_guided_samples_move_towards_the_target() -> None:
    model = reference_model("eps")
    sampler = ddpmkit.create("sampler", "ddim", steps=10)
    shape = (64, 2, 4, 4)

    def mean_of(guidance: ddpmkit.Guidance | None) -> float:
        gen = torch.Generator().manual_seed(0)
        return float(sampler.sample(model, shape, guidance=guidance, generator=gen).mean())

    plain = mean_of(None)
    guided = mean_of(ddpmkit.create("guidance", "mean-intensity", target=0.5, scale=50.0))
    assert abs(guided - 0.5) < abs(plain - 0.5) - 0.1, (plain, guided)
