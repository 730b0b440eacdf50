"""Sampling speed: ddpmkit's loops against bare forward passes and against diffusers.

1. Overhead: ddpmkit DDIM (50 steps) and DDPM (all T = 1000 steps) of the demo U-Net, wall
   time over the same number of bare forward passes of the same network (target <= 1.02).
2. Per-step cost of the loop itself: a 2D MLP, batch 4096, 1000 steps; (loop time - bare
   forward passes) / steps for ddpmkit's DDPM and DDIM and for diffusers' DDPMScheduler and
   DDIMScheduler loops on the same network (target: a third of diffusers').
3. The same network sampled through diffusers' DDIMScheduler loop and ddpmkit's DDIM, both
   50 steps (target ratio <= 1.0).

``python bench/speed_sampling.py [--quick]``; needs ``pip install diffusers`` (the benchmark's
only use of it). Every comparison interleaves its contenders; each ratio is the median over
paired repetitions, reported with its interquartile range.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from statistics import median

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import interleaved_samples, machine, paired_ratio

from ddpmkit import DiffusionModel, SamplerStep, create


def demo_unet() -> DiffusionModel:
    """The network of examples/shapes.toml (1.1 M parameters), untrained, eps-parameterized."""
    torch.manual_seed(0)
    net = create(
        "denoiser",
        "unet",
        in_channels=3,
        base_channels=32,
        channel_mults=(1, 2, 2),
        num_res_blocks=1,
        attention_levels=(2,),
    )
    schedule = create("schedule", "cosine", timesteps=1000)
    return DiffusionModel(schedule, net, create("parameterization", "eps")).eval()


def tiny_mlp() -> DiffusionModel:
    """A 2D MLP small enough that the loop around it shows, trained for 300 steps on two-moons
    so that sampling keeps x_t in the data's range (an untrained net lets x_t grow a
    hundredfold, and SiLU of large inputs costs more: the values matter to the timings)."""
    from ddpmkit.app.config import TrainConfig
    from ddpmkit.app.train import Trainer

    torch.manual_seed(0)
    net = create("denoiser", "mlp", in_channels=2, hidden=16, layers=1, time_dim=8)
    schedule = create("schedule", "linear", timesteps=1000)
    model = DiffusionModel(schedule, net, create("parameterization", "eps"))
    data = create("dataset", "two-moons", num_examples=4096)
    config = TrainConfig(steps=300, batch_size=1024, lr=3e-3, ema_decay=0.9)
    Trainer(model, data, config, progress=False).train()
    return model.eval()


def bare_loop(model: DiffusionModel, sampler: object, shape: tuple[int, ...]) -> Callable[[], None]:
    """The network's forward passes alone, on exactly the inputs ``sampler`` gives it (recorded
    once; the values matter: SiLU of large inputs, say, costs more than of unit ones)."""
    inputs: list[tuple[torch.Tensor, torch.Tensor]] = []
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    steps = sampler.timesteps(model)  # type: ignore[attr-defined]

    def record(step: SamplerStep) -> None:
        inputs.append((step.x.clone(), torch.full((shape[0],), step.t, dtype=torch.long)))

    inputs.append((x, torch.full((shape[0],), steps[0], dtype=torch.long)))
    sampler.sample(model, shape, x_T=x, callback=record)  # type: ignore[attr-defined]
    # the input of step i + 1 is the output of step i, at the next index
    pairs = [(inputs[0][0], inputs[0][1])]
    pairs += [
        (xi, torch.full((shape[0],), t, dtype=torch.long))
        for (xi, _), t in zip(inputs[1:], steps[1:], strict=False)
    ]
    net = model.denoiser

    def run() -> None:
        with torch.inference_mode():
            for x_t, t in pairs:
                net(x_t, t)

    return run


def ddpmkit_loop(
    model: DiffusionModel, sampler: object, shape: tuple[int, ...]
) -> Callable[[], None]:
    generator = torch.Generator().manual_seed(0)

    def run() -> None:
        sampler.sample(model, shape, generator=generator)  # type: ignore[attr-defined]

    return run


def diffusers_loop(
    model: DiffusionModel, scheduler: object, shape: tuple[int, ...]
) -> Callable[[], None]:
    """The loop of diffusers' pipelines: model output, then ``scheduler.step``."""
    net = model.denoiser
    generator = torch.Generator().manual_seed(0)

    def run() -> None:
        x = torch.randn(shape, generator=generator)
        with torch.inference_mode():
            for t in scheduler.timesteps:  # type: ignore[attr-defined]
                out = net(x, t.expand(shape[0]))
                x = scheduler.step(out, t, x, generator=generator).prev_sample  # type: ignore[attr-defined]

    return run


def diffusers_schedulers(steps: int) -> tuple[object, object]:
    from diffusers import DDIMScheduler, DDPMScheduler

    ddpm = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    ddim = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    ddpm.set_timesteps(steps)
    ddim.set_timesteps(steps)
    return ddpm, ddim


def run(quick: bool = False) -> str:
    """All three measurements, as a markdown section. Every ratio is the median over paired
    repetitions (one of each contender, interleaved), with its interquartile range."""
    torch.set_num_threads(1)
    repeats = 3 if quick else 15
    lines = ["### Sampling loops", "", f"Machine: {machine()}.", ""]

    # 1. overhead over bare forward passes, demo U-Net, batch 16
    model = demo_unet()
    shape = (16, 3, 16, 16)
    ddim = create("sampler", "ddim", steps=50)
    ddpm_steps = 100 if quick else 1000
    ddpm = create("sampler", "ddpm", steps=ddpm_steps) if quick else create("sampler", "ddpm")
    ddpm_repeats = 3 if quick else 7
    times = interleaved_samples(
        {
            "bare DDIM": bare_loop(model, ddim, shape),
            "ddpmkit DDIM": ddpmkit_loop(model, ddim, shape),
        },
        repeats,
    )
    times.update(
        interleaved_samples(
            {
                "bare DDPM": bare_loop(model, ddpm, shape),
                "ddpmkit DDPM": ddpmkit_loop(model, ddpm, shape),
            },
            ddpm_repeats,
        )
    )
    lines += [
        f"Demo U-Net (1.1 M parameters), batch {shape[0]} of 3x16x16: sampler CPU time over the "
        f"same number of bare forward passes, {repeats} (DDIM) and {ddpm_repeats} (DDPM) "
        "interleaved pairs; medians, the ratio with its interquartile range over the pairs.",
        "",
        "| sampler | steps | bare forwards | ddpmkit | ratio (target <= 1.03) |",
        "|---|---:|---:|---:|---:|",
    ]
    for kind, steps in (("DDIM", 50), ("DDPM", ddpm_steps)):
        bare, ours = times[f"bare {kind}"], times[f"ddpmkit {kind}"]
        lines.append(
            f"| {kind} | {steps} | {median(bare):.3f} s | {median(ours):.3f} s | "
            f"{paired_ratio(ours, bare)} |"
        )
    lines.append("")

    # 2. per-step cost of the loop, 2D MLP, batch 4096, 1000 steps
    try:
        d_ddpm, d_ddim = diffusers_schedulers(1000)
    except ImportError:
        return "\n".join([*lines, "(diffusers is not installed: `pip install diffusers`)", ""])
    mlp = tiny_mlp()
    shape = (4096, 2)
    kit_ddpm, kit_ddim = create("sampler", "ddpm"), create("sampler", "ddim", steps=1000)
    loop_repeats = 3 if quick else 25
    times = interleaved_samples(
        {
            "bare DDPM": bare_loop(mlp, kit_ddpm, shape),
            "bare DDIM": bare_loop(mlp, kit_ddim, shape),
            "ddpmkit DDPM": ddpmkit_loop(mlp, kit_ddpm, shape),
            "ddpmkit DDIM": ddpmkit_loop(mlp, kit_ddim, shape),
            "diffusers DDPM": diffusers_loop(mlp, d_ddpm, shape),
            "diffusers DDIM": diffusers_loop(mlp, d_ddim, shape),
        },
        loop_repeats,
    )

    def per_step(name: str, kind: str) -> list[float]:
        """The loop's own cost per step (us) in each repetition: its time minus the bare
        forward passes of the same repetition, over 1000 steps."""
        bare = times[f"bare {kind}"]
        return [(a - b) / 1000 * 1e6 for a, b in zip(times[name], bare, strict=True)]

    lines += [
        "Per-step cost of the loop itself: a 2D MLP (1 hidden layer of 16, trained briefly on "
        "two-moons so that samples stay in range), batch 4096, 1000 steps; (loop time - 1000 "
        "bare forward passes on the inputs ddpmkit's sampler of the same kind feeds the "
        f"network) / 1000 in each of {loop_repeats} interleaved repetitions, CPU time; "
        "medians, and the ratio's median and interquartile range over the repetitions "
        f"(bare forwards: {median(times['bare DDPM']):.3f} s and "
        f"{median(times['bare DDIM']):.3f} s).",
        "",
        "| loop | us per step | ddpmkit / diffusers (target <= 0.33) |",
        "|---|---:|---:|",
    ]
    for kind in ("DDPM", "DDIM"):
        ours, theirs = per_step(f"ddpmkit {kind}", kind), per_step(f"diffusers {kind}", kind)
        lines += [
            f"| ddpmkit {kind} | {median(ours):.1f} | {paired_ratio(ours, theirs)} |",
            f"| diffusers {kind}Scheduler | {median(theirs):.1f} | |",
        ]
    lines.append("")

    # 3. the same network through diffusers' DDIM loop and ddpmkit's DDIM, 50 steps
    _, d_ddim50 = diffusers_schedulers(50)
    ddim50 = create("sampler", "ddim", steps=50, spacing="leading")
    # with the U-Net the network is ~99.5% of either loop: more pairs to resolve the rest
    pairs = 3 if quick else 31
    lines += [
        "The same network, 50 DDIM steps (eta = 0, leading spacing in both): ddpmkit's `ddim` "
        f"against diffusers' DDIMScheduler loop, {pairs} interleaved pairs.",
        "",
        "| network | diffusers | ddpmkit | ratio (target <= 1.0) |",
        "|---|---:|---:|---:|",
    ]
    for label, net_model, shape in (
        ("2D MLP, batch 4096", mlp, (4096, 2)),
        ("demo U-Net, batch 16", model, (16, 3, 16, 16)),
    ):
        t = interleaved_samples(
            {
                "diffusers": diffusers_loop(net_model, d_ddim50, shape),
                "ddpmkit": ddpmkit_loop(net_model, ddim50, shape),
            },
            pairs,
        )
        lines.append(
            f"| {label} | {median(t['diffusers']):.3f} s | {median(t['ddpmkit']):.3f} s | "
            f"{paired_ratio(t['ddpmkit'], t['diffusers'])} |"
        )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and steps")
    print(run(parser.parse_args().quick))
