"""DDGAN against DDPM and DDIM at 4 network evaluations on the 2D three-component mixture.

Xiao et al. (2022): a few large denoising steps, each a generator trained adversarially. Here
T = 4 (DDGAN's VP-SDE schedule), an MLP generator and an MLP discriminator, trained for
``--steps`` steps. Against it, at the same 4 network calls: DDPM (respaced, fixed-small) and
DDIM (eta 0) sampling (a) the exact GMM oracle on a cosine T = 1000 schedule, the best any
network could do, (b) an MLP of the same size trained with L_simple for the same number of
steps on that schedule, and (c) that MLP trained with L_simple on DDGAN's own T = 4 schedule,
sampled by DDPM on all four steps. The respaced samplers visit indices 0, 250, 500, 750
(``leading``): a first step from index 999, where sqrt(abar) = 5e-5, would multiply a trained
network's eps error by 2e4. Each cell is SW_1 between 16000 samples and 16000 fresh mixture
draws, mean of 3 seeds. Prints a markdown table; writes docs/images/ddgan-toy.png.

    python bench/ddgan_toy.py [--steps 6000]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from mixture import MIXTURE

import ddpmkit
from ddpmkit.app.config import TrainConfig
from ddpmkit.app.metrics import sliced_wasserstein
from ddpmkit.app.train import Trainer

# DDGAN's T = 4: the VP SDE (beta_min 0.1, beta_max 20) at four steps (Xiao et al. 2022)
BETAS = [0.47825530296187846, 0.8492060043167428, 0.9564177091531395, 0.987403901151003]
N, SEEDS, NFE = 16000, (0, 1, 2), 4
MLP = {"hidden": 256, "layers": 3}


def train(
    model: ddpmkit.DiffusionModel,
    steps: int,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    objective: ddpmkit.TrainingObjective | None = None,
) -> ddpmkit.DiffusionModel:
    """Train ``model`` on the mixture (batch 256, EMA 0.999); returns its EMA copy."""
    data = ddpmkit.create("dataset", "gmm", num_examples=50000, seed=0, **MIXTURE)
    config = TrainConfig(
        steps=steps,
        batch_size=256,
        lr=lr,
        adam_betas=betas,
        grad_clip=0,
        ema_decay=0.999,
        log_every=max(1, steps // 4),
    )
    start = time.perf_counter()
    trainer = Trainer(
        model,
        data,
        config,
        objective=objective,
        progress=False,
        on_metrics=lambda step, m: print(f"  {step}: {m}", flush=True),
    )
    trainer.train()
    print(f"  trained in {time.perf_counter() - start:.0f} s", flush=True)
    return trainer.ema_model()


def swd(sampler: ddpmkit.Sampler, model: ddpmkit.DiffusionModel) -> tuple[float, torch.Tensor]:
    """Mean SW_1 over the seeds, and the first seed's samples."""
    scores, first = [], None
    for seed in SEEDS:
        x = sampler.sample(model, (N, 2), generator=torch.Generator().manual_seed(seed))
        reference = ddpmkit.create("dataset", "gmm", num_examples=N, seed=1000 + seed, **MIXTURE)
        ref = reference.batch(list(range(N))).images
        scores.append(float(sliced_wasserstein(x, ref, 256, p=1, generator=torch.Generator())))
        first = x if first is None else first
    assert first is not None
    return sum(scores) / len(scores), first


def diffusion(
    schedule: ddpmkit.NoiseSchedule, denoiser: ddpmkit.Denoiser, variance: bool
) -> ddpmkit.DiffusionModel:
    """An eps-predicting model, with the fixed-small variance when ``variance``."""
    return ddpmkit.DiffusionModel(
        schedule,
        denoiser,
        ddpmkit.create("parameterization", "eps"),
        variance=ddpmkit.create("variance", "fixed-small") if variance else None,
        decoder="gaussian",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--figure", type=Path, default=Path("docs/images/ddgan-toy.png"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rows: dict[str, float] = {}
    samples: dict[str, torch.Tensor] = {}

    print("DDGAN", flush=True)
    ddgan = ddpmkit.DiffusionModel(
        ddpmkit.create("schedule", "betas", betas=BETAS),
        ddpmkit.create(
            "denoiser",
            "ddgan-generator",
            in_channels=2,
            z_dim=8,
            backbone={"type": "mlp", **MLP},
        ),
        ddpmkit.create("parameterization", "x0"),
        decoder="gaussian",
    )
    objective = ddpmkit.create("objective", "ddgan", width=256, lr=1e-3, r1_every=1)
    ema = train(ddgan, args.steps, 5e-4, (0.5, 0.9), objective)
    label = "DDGAN (T = 4)"
    rows[label], samples[label] = swd(ddpmkit.create("sampler", "ddgan"), ema)

    cosine = ddpmkit.create("schedule", "cosine", timesteps=1000)
    oracle = ddpmkit.create("denoiser", "gmm-oracle", **MIXTURE)
    print("L_simple MLP, cosine T = 1000", flush=True)
    trained = train(
        diffusion(cosine, ddpmkit.create("denoiser", "mlp", in_channels=2, **MLP), True),
        args.steps,
        1e-3,
    )
    for source, model in (("exact oracle", diffusion(cosine, oracle, True)), ("MLP", trained)):
        for name, params in (("DDPM", {"spacing": "leading"}), ("DDIM", {"eta": 0.0})):
            sampler_name = "ddpm" if name == "DDPM" else "ddim"
            sampler = ddpmkit.create("sampler", sampler_name, steps=NFE, **params)
            label = f"{name}, {NFE} of T = 1000, {source}"
            rows[label], samples[label] = swd(sampler, model)

    print("L_simple MLP, DDGAN's T = 4", flush=True)
    four = train(
        diffusion(
            ddpmkit.create("schedule", "betas", betas=BETAS),
            ddpmkit.create("denoiser", "mlp", in_channels=2, **MLP),
            True,
        ),
        args.steps,
        1e-3,
    )
    label = "DDPM, T = 4, MLP"
    rows[label], samples[label] = swd(ddpmkit.create("sampler", "ddpm"), four)

    floor = []
    for seed in SEEDS:
        a = ddpmkit.create("dataset", "gmm", num_examples=N, seed=2000 + seed, **MIXTURE)
        b = ddpmkit.create("dataset", "gmm", num_examples=N, seed=1000 + seed, **MIXTURE)
        x, y = (d.batch(list(range(N))).images for d in (a, b))
        floor.append(float(sliced_wasserstein(x, y, 256, p=1, generator=torch.Generator())))
    rows["data (noise floor)"] = sum(floor) / len(floor)

    print(f"\n| sampler ({NFE} network evaluations) | SW_1 to data |")
    print("|---|---:|")
    for label, value in rows.items():
        print(f"| {label} | {value:.4f} |")

    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(samples), figsize=(3 * len(samples), 3.2))
    for axis, (label, x) in zip(axes, samples.items(), strict=True):
        axis.scatter(x[:4000, 0], x[:4000, 1], s=1, alpha=0.4)
        axis.set_title(label, fontsize=7)
        axis.set_xlim(-2.5, 2.5)
        axis.set_ylim(-2.0, 2.5)
        axis.set_xticks([])
        axis.set_yticks([])
    from ddpmkit.tools.plots import save_figure

    save_figure(figure, args.figure)
    print(f"wrote {args.figure}")


if __name__ == "__main__":
    main()
