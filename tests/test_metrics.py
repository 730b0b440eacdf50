"""ddpmkit.metrics: sliced Wasserstein (Bonneel et al. 2015) and MMD (Gretton et al. 2012)."""

from __future__ import annotations

import math

import pytest
import torch

from ddpmkit.app.metrics import mmd, sliced_wasserstein, wasserstein_1d


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def blobs(n: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    """Two 2D Gaussian blobs, optionally moved along x."""
    g = gen(seed)
    centres = torch.tensor([[-1.0, 0.0], [1.0, 0.5]])[torch.randint(0, 2, (n,), generator=g)]
    return centres + 0.3 * torch.randn(n, 2, generator=g) + torch.tensor([shift, 0.0])


def test_identical_sets_are_at_distance_zero() -> None:
    x = blobs(500, 0)
    for p in (1, 2):
        assert float(sliced_wasserstein(x, x, p=p, generator=gen(1))) == 0.0
        # a permutation moves rows, and BLAS rounds a row's projection by where it sits in a
        # block: the same point can project a few float32 ulps (of |x| ~ 2, ~1e-6) apart
        shuffled = x[torch.randperm(500, generator=gen(2))]
        assert float(sliced_wasserstein(x, shuffled, p=p, generator=gen(1))) < 1e-5


def test_one_dimensional_wasserstein_matches_hand_computation() -> None:
    # quantiles of {0, 1} and {0, 0.5, 1} differ by 0.5 on (1/3, 2/3): W_1 = 1/6, W_2^2 = 1/12
    u, v = torch.tensor([[1.0, 0.0]]).double(), torch.tensor([[0.5, 0.0, 1.0]]).double()
    torch.testing.assert_close(wasserstein_1d(u, v, 1), torch.tensor([1 / 6]).double())
    torch.testing.assert_close(wasserstein_1d(u, v, 2), torch.tensor([1 / 12]).double())
    # unequal sizes: repeating every point keeps the measure, hence the distance
    a, b = torch.randn(4, 50, generator=gen(0)), torch.randn(4, 70, generator=gen(1))
    torch.testing.assert_close(wasserstein_1d(a, b), wasserstein_1d(a.repeat(1, 3), b))


@pytest.mark.parametrize("p", [1, 2])
def test_shift_gives_the_closed_form(p: int) -> None:
    """x + c: every projection moves by c . u, so W_p = |c . u| and SW_p^p = E|c . u|^p.

    For u uniform on the circle, E|c . u| = 2|c|/pi and E (c . u)^2 = |c|^2 / 2. With L = 4096
    directions the relative standard error is std(|cos|) / (E|cos| sqrt(L)) = 0.8% for p = 1
    (0.6% for p = 2 after the square root), so 3% relative is about 4 standard errors.
    """
    x = blobs(300, 2)
    c = torch.tensor([0.3, -0.4])  # |c| = 0.5
    expected = 2 * 0.5 / math.pi if p == 1 else 0.5 / math.sqrt(2)
    got = float(sliced_wasserstein(x, x + c, num_projections=4096, p=p, generator=gen(3)))
    assert got == pytest.approx(expected, rel=0.03)


def test_symmetric_and_works_for_unequal_sizes() -> None:
    x, y = blobs(400, 4), blobs(300, 5, shift=0.5)
    for p in (1, 2):
        xy = sliced_wasserstein(x, y, p=p, generator=gen(6))
        yx = sliced_wasserstein(y, x, p=p, generator=gen(6))
        torch.testing.assert_close(xy, yx)
    torch.testing.assert_close(mmd(x, y), mmd(y, x))


def test_different_distributions_are_further_apart_than_two_samples_of_one() -> None:
    """A 0.5 shift against two independent 1000-point samples of the same distribution.

    SW_1 between two samples of size n decays like 1/sqrt(n): ~0.04 here, against 2|c|/pi = 0.32
    for the shift (0.30 measured between samples); the unbiased MMD^2 of one distribution is
    0 +- O(1/n) (~1e-3).
    """
    x, same, other = blobs(1000, 7), blobs(1000, 8), blobs(1000, 9, shift=0.5)
    sw_same = float(sliced_wasserstein(x, same, p=1, generator=gen(0)))
    sw_other = float(sliced_wasserstein(x, other, p=1, generator=gen(0)))
    assert sw_same < 0.06 and sw_other > 0.25 and sw_other > 5 * sw_same
    mmd_same, mmd_other = float(mmd(x, same)), float(mmd(x, other))
    assert abs(mmd_same) < 0.01 and mmd_other > 10 * max(abs(mmd_same), 1e-3)


def test_unbiased_mmd_is_zero_on_average_for_one_distribution() -> None:
    """MMD_u^2 is unbiased: over 20 pairs of 200-point samples its mean is 0 within 4 SE.

    A biased estimate (V-statistic) would be positive by about 2 k(0) / n ~ 0.06 with the six
    unit-height kernels, far beyond the tolerance.
    """
    values = torch.stack([mmd(blobs(200, 100 + i), blobs(200, 200 + i)) for i in range(20)])
    assert abs(float(values.mean())) < 4 * float(values.std()) / math.sqrt(20) + 1e-4


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="same dimension"):
        sliced_wasserstein(torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="num_projections"):
        sliced_wasserstein(torch.zeros(3, 2), torch.zeros(3, 2), num_projections=0)
    with pytest.raises(ValueError, match="2 points"):
        mmd(torch.zeros(1, 2), torch.zeros(3, 2))
