"""Which training indices a sampler with S < T steps visits (Song et al. 2021; Lu et al. 2022)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from ddpmkit import ConfigError

IndexSpacing = Literal["leading", "trailing", "linspace"]
"""The spacings of training indices shared by every bundled sampler."""

SPACING_HELP = (
    "How S of the T training steps are chosen: leading = 0, k, 2k, ... with k = T // S; "
    "trailing = T-1, T-1-T/S, ...; linspace = S evenly spaced from 0 to T-1."
)


def ddim_timesteps(num_train: int, steps: int, spacing: str, name: str = "ddim") -> list[int]:
    """The S training indices visited by DDIM, in decreasing order.

    Duplicates are merged, so fewer than S indices can come back when S is close to T.
    ``name`` is the sampler that reports a ``steps`` larger than T.
    """
    if steps > num_train:
        raise ConfigError(f"{name}: steps = {steps} exceeds the schedule's T = {num_train}")
    if spacing == "leading":
        ts = np.arange(steps) * (num_train // steps)
    elif spacing == "trailing":
        # T - 1 - round(i T / S) for i < S, in integers: never below 0 (floats could overshoot)
        ts = num_train - 1 - (np.arange(steps) * num_train + steps // 2) // steps
    else:
        ts = np.round(np.linspace(0, num_train - 1, steps)).astype(np.int64)
    return sorted({int(t) for t in ts}, reverse=True)


def logsnr_timesteps(
    log_snr: torch.Tensor,
    steps: int,
    name: str,
    low: float | None = None,
    high: float | None = None,
) -> list[int]:
    """S indices uniform in lambda = log(alpha / sigma) = log SNR / 2, decreasing (Lu et al.
    2022, section 3.3 and appendix D.1: the time steps of DPM-Solver for a discrete-time model).

    lambda runs from lambda_{T-1} to lambda_0 in S equal steps; each grid point is mapped to
    the training index of nearest lambda (``log_snr`` decreases strictly, so this is a search
    in a sorted list). ``low`` and ``high`` (in log SNR) narrow the range: above ``low`` the
    chain still starts at index T-1 (x_T ~ N(0, I)) and its first step jumps to log SNR
    ``low``, so the other S - 1 points are uniform in [low, high]. Where lambda_t is sparse
    (a cosine schedule's last indices) two grid points can share an index; each is then moved
    to the next free index, so exactly S distinct indices come back (hence S network
    evaluations), T-1 first.
    """
    num_train = int(log_snr.numel())
    if steps > num_train:
        raise ConfigError(f"{name}: steps = {steps} exceeds the schedule's T = {num_train}")
    lam = (0.5 * log_snr.to(torch.float64)).flip(0)  # increasing: index T-1 first
    start, end = float(lam[0]), float(lam[-1])
    if high is not None:
        end = min(end, 0.5 * high)
    jump = low is not None and 0.5 * low > start and steps > 1
    if jump:
        start = 0.5 * float(low)  # type: ignore[arg-type]
    if start >= end:
        raise ConfigError(f"{name}: the log-SNR range [{2 * start:.3g}, {2 * end:.3g}] is empty")
    grid = torch.linspace(start, end, steps - 1 if jump else steps, dtype=torch.float64)
    # nearest lambda: the insertion point or the one before it
    right = torch.searchsorted(lam, grid).clamp(max=num_train - 1)
    left = (right - 1).clamp(min=0)
    nearest = torch.where((grid - lam[left]).abs() <= (lam[right] - grid).abs(), left, right)
    ts = ([num_train - 1] if jump else []) + [num_train - 1 - int(i) for i in nearest]
    # distinct and decreasing: below the previous one, and above the ones still to come
    for i in range(1, steps):
        ts[i] = min(ts[i], ts[i - 1] - 1)
    for i in range(steps - 1, -1, -1):
        ts[i] = max(ts[i], 0 if i == steps - 1 else ts[i + 1] + 1)
    return ts
