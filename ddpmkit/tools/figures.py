"""The pictures of ``ddpmkit plot``: schedules, the forward process, spectra, trajectories."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ddpmkit.core.images import make_grid
from ddpmkit.core.interfaces import NoiseSchedule
from ddpmkit.core.model import DiffusionModel, randn_like
from ddpmkit.core.values import SamplerStep
from ddpmkit.tools.plots import plt, save_figure


def plot_schedules(schedules: dict[str, NoiseSchedule], path: Path) -> Path:
    """abar_t and log-SNR(t) of each schedule side by side, against t / T."""
    fig, (ax_abar, ax_snr) = plt.subplots(1, 2, figsize=(10, 4))
    for label, schedule in schedules.items():
        x = (torch.arange(schedule.T, dtype=torch.float64) + 1) / schedule.T
        ax_abar.plot(x, schedule.alphas_cumprod, label=label)
        ax_snr.plot(x, schedule.log_snr, label=label)
    ax_abar.set(xlabel="t / T", ylabel=r"$\bar\alpha_t$", title="signal kept")
    ax_snr.set(
        xlabel="t / T", ylabel="log SNR(t)", title=r"log SNR = log $\bar\alpha/(1-\bar\alpha)$"
    )
    for ax in (ax_abar, ax_snr):
        ax.grid(True, alpha=0.3)
        ax.legend()
    return save_figure(fig, path)


def forward_images(
    model: DiffusionModel, x0: torch.Tensor, steps: Sequence[int], generator: torch.Generator
) -> torch.Tensor:
    """x_t ~ q(x_t | x_0) for each image (rows) and each index in ``steps`` (columns)."""
    rows = []
    for image in x0:
        batch = image.expand(len(steps), *image.shape)
        t = torch.tensor(list(steps), device=x0.device)
        rows.append(model.q_sample(batch, t, randn_like(batch, generator)))
    return torch.cat(rows)


def plot_forward(
    model: DiffusionModel,
    x0: torch.Tensor,
    steps: Sequence[int],
    path: Path,
    generator: torch.Generator,
) -> Path:
    """A grid of x_t: one row per image, one column per index in ``steps``."""
    grid = make_grid(forward_images(model, x0, steps, generator).cpu(), nrow=len(steps))
    fig, ax = plt.subplots(figsize=(1.2 * len(steps), 1.2 * len(x0) + 0.6))
    ax.imshow(grid.permute(1, 2, 0).squeeze(-1).numpy(), interpolation="nearest", cmap="gray")
    size = x0.shape[-1] + 1
    ax.set_xticks([size * (i + 0.5) for i in range(len(steps))], [f"t={t}" for t in steps])
    ax.set_yticks([])
    ax.set_title(r"forward process $x_t \sim q(x_t \mid x_0)$")
    return save_figure(fig, path)


def radial_power_spectrum(images: torch.Tensor) -> torch.Tensor:
    """Mean power |F(x)|^2 per integer radial frequency, averaged over images and channels."""
    h, w = images.shape[-2:]
    power = torch.fft.fft2(images.double()).abs().pow(2).mean(dim=tuple(range(images.ndim - 2)))
    fy = torch.fft.fftfreq(h).abs()[:, None] * h
    fx = torch.fft.fftfreq(w).abs()[None, :] * w
    radius = torch.sqrt(fy**2 + fx**2).round().long()
    count = torch.bincount(radius.flatten())
    total = torch.bincount(radius.flatten(), weights=power.flatten().cpu())
    keep = min(h, w) // 2 + 1  # radii beyond Nyquist are corners only
    return (total / count.clamp(min=1))[:keep]


def plot_spectrum(
    model: DiffusionModel,
    x0: torch.Tensor,
    steps: Sequence[int],
    path: Path,
    generator: torch.Generator,
) -> Path:
    """Radially averaged power spectrum of x_t for each t: noise drowns high frequencies first.

    F(x_t) = sqrt(abar_t) F(x_0) + sqrt(1 - abar_t) F(eps): natural images have power falling
    with frequency, white noise is flat, so the noise floor covers high frequencies first.
    """
    fig, ax = plt.subplots(figsize=(7, 4))
    for t in steps:
        batch_t = torch.full((x0.shape[0],), t, device=x0.device)
        x_t = model.q_sample(x0, batch_t, randn_like(x0, generator))
        spectrum = radial_power_spectrum(x_t.cpu())
        ax.loglog(range(1, len(spectrum)), spectrum[1:], label=f"t={t}")
    clean = radial_power_spectrum(x0.cpu())
    ax.loglog(range(1, len(clean)), clean[1:], "k--", lw=1, label=r"$x_0$")
    ax.set(xlabel="radial frequency", ylabel="power", title="power spectrum of $x_t$")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


class TrajectoryRecorder:
    """A sampler callback keeping x_t and the predicted x0 at chosen step numbers (default:
    ``count`` evenly spaced over the sampler's steps, the last one included)."""

    def __init__(self, at: Sequence[int] | None = None, count: int = 6) -> None:
        self.at = set(at) if at is not None else None
        self.count = count
        self.steps: list[SamplerStep] = []

    def __call__(self, step: SamplerStep) -> None:
        if self.at is None:
            last = step.total - 1
            self.at = {round(i * last / max(self.count - 1, 1)) for i in range(self.count)}
        if step.index in self.at or step.index == step.total - 1:
            self.steps.append(step)


def plot_trajectory(steps: Sequence[SamplerStep], path: Path) -> Path:
    """Two rows per sample: x_t after each recorded step, and the x0 predicted there."""
    columns = len(steps)
    samples = steps[0].x.shape[0]
    tiles = []
    for i in range(samples):
        tiles += [s.x[i].cpu() for s in steps] + [s.x0[i].cpu().clamp(-1, 1) for s in steps]
    grid = make_grid(torch.stack(tiles), nrow=columns)
    fig, ax = plt.subplots(figsize=(1.2 * columns, 2.4 * samples + 0.6))
    ax.imshow(grid.permute(1, 2, 0).squeeze(-1).numpy(), interpolation="nearest", cmap="gray")
    size = steps[0].x.shape[-1] + 1
    ax.set_xticks([size * (j + 0.5) for j in range(columns)], [f"t={s.t}" for s in steps])
    ax.set_yticks(
        [size * (r + 0.5) for r in range(2 * samples)],
        [r"$x_t$" if r % 2 == 0 else r"$\hat x_0$" for r in range(2 * samples)],
    )
    ax.set_title("sampling trajectory: the sample after the step from t, and x0 predicted at t")
    return save_figure(fig, path)
