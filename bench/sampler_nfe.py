"""Sample quality against network evaluations: DDPM, DDIM and DPM-Solver++ on the GMM oracle.

The exact ``gmm-oracle`` of the 2D three-component mixture of tests/test_oracle_sampling.py
(cosine schedule, T = 1000, eps parameterization) is sampled by respaced DDPM (sigma^2 =
beta~_{t|s}, fixed-small), DDIM (eta = 0) and DPM-Solver++(2M) at 5 .. 1000 network
evaluations, with trailing, linspace or logSNR-uniform steps (``spacing``; the last row jumps
from index T-1 to log SNR -5 and spaces the rest uniformly up to log SNR 7). Each cell is
SW_1 (ddpmkit.app.metrics.sliced_wasserstein, 256 projections) between N samples and N fresh
mixture draws, averaged over three seeds; the "data" row is SW_1 between two fresh draws, the
sampling-noise floor. Prints a markdown table and writes docs/images/sampler_nfe.png.

    python bench/sampler_nfe.py             # the table and the plot
    python bench/sampler_nfe.py --paired 10  # DPM-Solver++@20 against DDPM@1000, paired seeds
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from mixture import MIXTURE

import ddpmkit
from ddpmkit import DiffusionModel
from ddpmkit.app.metrics import sliced_wasserstein
from ddpmkit.tools.plots import save_figure
from ddpmkit_toy import GMMOracle

NFES = (5, 10, 20, 50, 100, 1000)
SEEDS = (0, 1, 2)
N = 16000
SAMPLERS = {
    # label: (sampler, its params besides steps, the model's reverse variance)
    "DDPM (beta~, trailing)": ("ddpm", {"spacing": "trailing"}, "fixed-small"),
    "DDPM (beta~, linspace)": ("ddpm", {"spacing": "linspace"}, "fixed-small"),
    "DDIM (eta 0, trailing)": ("ddim", {"spacing": "trailing"}, None),
    "DDIM (eta 0, linspace)": ("ddim", {"spacing": "linspace"}, None),
    "DPM-Solver++ (trailing)": ("dpm-solver++", {}, None),
    "DPM-Solver++ (logSNR)": ("dpm-solver++", {"spacing": "logsnr"}, None),
    "DPM-Solver++ (logSNR -5..7)": (
        "dpm-solver++",
        {"spacing": "logsnr", "logsnr_min": -5.0, "logsnr_max": 7.0},
        None,
    ),
}
IMAGE = Path(__file__).resolve().parent.parent / "docs" / "images" / "sampler_nfe.png"


def model(variance: str | None) -> DiffusionModel:
    return DiffusionModel(
        ddpmkit.create("schedule", "cosine", timesteps=1000),
        ddpmkit.create("denoiser", "gmm-oracle", **MIXTURE),
        ddpmkit.create("parameterization", "eps"),
        variance=ddpmkit.create("variance", variance) if variance else None,
        decoder="gaussian",
    )


def fresh(n: int, seed: int) -> torch.Tensor:
    """``n`` draws of the mixture."""
    return GMMOracle(GMMOracle.Params(**MIXTURE)).sample(n, torch.Generator().manual_seed(seed))


def swd(x: torch.Tensor, seed: int) -> float:
    """SW_1 to N fresh mixture draws (the same reference and projections for every sampler)."""
    reference = fresh(N, 1000 + seed)
    return float(sliced_wasserstein(x, reference, 256, p=1, generator=torch.Generator()))


PAIRED = {
    # the target: DPM-Solver++ at 20 evaluations against DDPM at 1000, on 10 seeds
    "DDPM, 1000 steps (beta~)": ("ddpm", {"steps": 1000, "spacing": "trailing"}, "fixed-small"),
    "DPM-Solver++, 20 steps, log SNR -5..7": (
        "dpm-solver++",
        {"steps": 20, "spacing": "logsnr", "logsnr_min": -5.0, "logsnr_max": 7.0},
        None,
    ),
    "DPM-Solver++, 1000 steps": ("dpm-solver++", {"steps": 1000}, None),
}


def paired(seeds: int) -> None:
    """SW_1 of each PAIRED sampler on ``seeds`` paired seeds, and the paired differences."""
    scores: dict[str, torch.Tensor] = {}
    for label, (name, params, variance) in PAIRED.items():
        m, sampler = model(variance), ddpmkit.create("sampler", name, **params)
        scores[label] = torch.tensor(
            [
                swd(sampler.sample(m, (N, 2), generator=torch.Generator().manual_seed(s)), s)
                for s in range(seeds)
            ]
        )
    scores["data (noise floor)"] = torch.tensor([swd(fresh(N, 2000 + s), s) for s in range(seeds)])
    print(f"| sampler | SW_1, mean of {seeds} seeds | standard error |\n|---|---:|---:|")
    for label, values in scores.items():
        print(f"| {label} | {values.mean():.4f} | {values.std() / seeds**0.5:.4f} |")
    base = scores["DDPM, 1000 steps (beta~)"]
    for label in list(PAIRED)[1:]:
        d = scores[label] - base
        print(f"{label} - DDPM 1000: {d.mean():+.4f} +- {d.std() / seeds**0.5:.4f}")


def main() -> None:
    torch.set_num_threads(1)
    if len(sys.argv) > 2 and sys.argv[1] == "--paired":
        paired(int(sys.argv[2]))
        return
    start = time.perf_counter()
    results: dict[str, list[float]] = {}
    for label, (name, params, variance) in SAMPLERS.items():
        m = model(variance)
        row = []
        for nfe in NFES:
            sampler = ddpmkit.create("sampler", name, steps=nfe, **params)
            assert len(sampler.timesteps(m)) == nfe, (label, nfe)
            scores = [
                swd(sampler.sample(m, (N, 2), generator=torch.Generator().manual_seed(s)), s)
                for s in SEEDS
            ]
            row.append(sum(scores) / len(scores))
        results[label] = row
    floor = [swd(fresh(N, 2000 + s), s) for s in SEEDS]
    results["data (noise floor)"] = [sum(floor) / len(floor)] * len(NFES)

    print(f"SW_1 to fresh data, N = {N}, mean of {len(SEEDS)} seeds (lower is better)\n")
    print("| sampler | " + " | ".join(f"NFE {n}" for n in NFES) + " |")
    print("|---|" + "---:|" * len(NFES))
    for label, row in results.items():
        print(f"| {label} | " + " | ".join(f"{v:.4f}" for v in row) + " |")
    print(f"\n{time.perf_counter() - start:.0f} s")

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, row in results.items():
        style = {"ls": ":", "color": "gray"} if label.startswith("data") else {"marker": "o"}
        ax.loglog(NFES, row, label=label, **style)
    ax.set_xlabel("network evaluations (NFE)")
    ax.set_ylabel("sliced Wasserstein SW_1 to data")
    ax.set_title("GMM oracle, cosine T = 1000")
    ax.legend(fontsize=8)
    save_figure(fig, IMAGE)
    print(f"wrote {IMAGE}")


if __name__ == "__main__":
    main()
