"""Trainer overhead: ddpmkit's training loop against a bare PyTorch loop on the same model.

The bare loop is what one would write by hand for the same training: t and eps drawn, x_t
formed, the network's mean squared error, AdamW, gradient clipping and an EMA update (one fused
lerp). Two networks: the demo U-Net (batch 64 of 3x16x16, the demo's training) and a 2D MLP at
batch 4096 (where anything around the network shows). Whole loops of N steps including the data
access, ``Trainer.train()`` against the bare loop, interleaved repetitions (the ratio: its
median over the pairs, with the interquartile range; target <= 1.03).

``python bench/speed_trainer.py [--quick]``
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from statistics import median

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import interleaved_samples, machine, paired_ratio
from speed_sampling import demo_unet

from ddpmkit import Dataset, DiffusionModel, create
from ddpmkit.app.config import TrainConfig
from ddpmkit.app.train import Trainer, batch_indices


def setups() -> dict[str, tuple[Callable[[], DiffusionModel], Dataset, int]]:
    def unet() -> DiffusionModel:
        return demo_unet().train()

    def mlp() -> DiffusionModel:
        torch.manual_seed(0)
        net = create("denoiser", "mlp", in_channels=2, hidden=64, layers=2)
        return DiffusionModel(
            create("schedule", "linear", timesteps=1000), net, create("parameterization", "eps")
        )

    shapes = create("dataset", "shapes", image_size=16, num_examples=2048)
    moons = create("dataset", "two-moons", num_examples=16384)
    return {"demo U-Net, batch 64": (unet, shapes, 64), "2D MLP, batch 4096": (mlp, moons, 4096)}


def ddpmkit_loop(
    make: Callable[[], DiffusionModel], data: Dataset, batch: int, steps: int
) -> Callable[[], None]:
    config = TrainConfig(steps=steps, batch_size=batch, lr=1e-4, log_every=steps)
    model = make()

    def run() -> None:
        trainer = Trainer(model, data, config, progress=False)
        trainer.train()

    return run


def bare_loop(
    make: Callable[[], DiffusionModel], data: Dataset, batch: int, steps: int
) -> Callable[[], None]:
    model = make()
    net = model.denoiser
    sqrt_abar = model.sqrt_alphas_cumprod
    sqrt_one_minus = model.sqrt_one_minus_alphas_cumprod

    def run() -> None:
        params = [p for p in net.parameters()]
        opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
        ema = [p.detach().clone() for p in params]
        gen = torch.Generator().manual_seed(1)
        for step in range(steps):
            x0 = data.batch(batch_indices(len(data), batch, step, 0)).images
            t = torch.randint(0, 1000, (batch,), generator=gen)
            eps = torch.randn(x0.shape, generator=gen)
            shape = (batch,) + (1,) * (x0.ndim - 1)
            x_t = sqrt_abar[t].view(shape) * x0 + sqrt_one_minus[t].view(shape) * eps
            loss = nn.functional.mse_loss(net(x_t, t), eps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            with torch.no_grad():
                torch._foreach_lerp_(ema, params, 0.001)
        loss.item()

    return run


def run(quick: bool = False) -> str:
    """The comparison as a markdown section."""
    torch.set_num_threads(1)
    steps = 5 if quick else 20
    lines = [
        "### Trainer overhead",
        "",
        f"Machine: {machine()}.",
        "",
        f"{steps} training steps including the data access; ddpmkit's `Trainer.train()` "
        "(AdamW, clipping, EMA, no checkpoint folder) against the bare loop; CPU time of "
        "interleaved repetitions (7 for the U-Net, 25 for the MLP): medians, and the ratio's "
        "median and interquartile range over the paired repetitions.",
        "",
        "| model | bare loop | ddpmkit | ratio (target <= 1.03) |",
        "|---|---:|---:|---:|",
    ]
    for label, (make, data, batch) in setups().items():
        times = interleaved_samples(
            {
                "bare": bare_loop(make, data, batch, steps),
                "ddpmkit": ddpmkit_loop(make, data, batch, steps),
            },
            repeats=3 if quick else (7 if "U-Net" in label else 25),
        )
        lines.append(
            f"| {label} | {median(times['bare']) / steps * 1e3:.1f} ms/step | "
            f"{median(times['ddpmkit']) / steps * 1e3:.1f} ms/step | "
            f"{paired_ratio(times['ddpmkit'], times['bare'])} |"
        )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and repetitions")
    print(run(parser.parse_args().quick))
