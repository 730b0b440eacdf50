"""GPU throughput at the CIFAR-10 DDPM configuration (Ho et al. 2020; 35.7 M parameters).

Training images/s (ddpmkit's ``Trainer`` step: AdamW, clipping, EMA) and sampling images/s
(DDIM) in fp32, bf16 autocast, and bf16 autocast + ``torch.compile``, for ddpmkit's U-Net and
for diffusers' UNet2DModel at the same configuration (channels 128-256-256-256, 2 blocks per
level, one attention head at 16x16 and in the middle, dropout 0.1), trained by a bare loop and
sampled by its DDIMScheduler loop. Prints a markdown table as each row finishes.

``bench/gpu.sh`` runs it (one call, under 5 minutes on one H100); ``--size tiny`` runs a
small network on any device in seconds, to check the script itself.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import machine

from ddpmkit import Batch, DiffusionModel, create
from ddpmkit.app.accel import autocast
from ddpmkit.app.config import TrainConfig
from ddpmkit.app.train import Trainer

SIZES = {
    # Ho et al.'s CIFAR-10 model: 35.7 M parameters; batch 128 as in the paper
    "cifar10": {"base": 128, "mults": (1, 2, 2, 2), "res": 2, "image": 32, "batch": 128},
    "tiny": {"base": 32, "mults": (1, 2), "res": 1, "image": 16, "batch": 4},
}


def ddpmkit_model(size: dict, device: torch.device) -> DiffusionModel:
    torch.manual_seed(0)
    net = create(
        "denoiser",
        "unet",
        in_channels=3,
        base_channels=size["base"],
        channel_mults=size["mults"],
        num_res_blocks=size["res"],
        attention_levels=(1,),
        num_heads=1,
        dropout=0.1,
        groups=32 if size["base"] >= 32 else 8,
        time_injection="add",
    )
    schedule = create("schedule", "linear", timesteps=1000)
    return DiffusionModel(schedule, net, create("parameterization", "eps")).to(device)


def diffusers_model(size: dict, device: torch.device) -> nn.Module:
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    widths = tuple(size["base"] * m for m in size["mults"])
    down = ["DownBlock2D"] * len(widths)
    down[1] = "AttnDownBlock2D"
    up = ["UpBlock2D"] * len(widths)
    up[-2] = "AttnUpBlock2D"
    return UNet2DModel(
        sample_size=size["image"],
        in_channels=3,
        out_channels=3,
        block_out_channels=widths,
        layers_per_block=size["res"],
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        attention_head_dim=widths[1],  # one head at the attention level, as Ho et al.
        norm_num_groups=32 if size["base"] >= 32 else 8,
        dropout=0.1,
    ).to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(
    fn: Callable[[], object], images: int, device: torch.device, seconds: float
) -> float:
    """Images per second of ``fn`` (``images`` per call): two warm-up calls (compilation),
    then as many calls as fit in ``seconds``."""
    for _ in range(2):
        fn()
    sync(device)
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < seconds:
        fn()
        calls += 1
        if calls % 5 == 0:
            sync(device)
    sync(device)
    return calls * images / (time.perf_counter() - start)


def ddpmkit_train(
    size: dict, device: torch.device, precision: str, compile_: bool
) -> Callable[[], object]:
    model = ddpmkit_model(size, device)
    config = TrainConfig(
        steps=10**9, batch_size=size["batch"], precision=precision, compile=compile_
    )
    data = create("dataset", "shapes", image_size=size["image"], num_examples=size["batch"])
    trainer = Trainer(model, data, config, progress=False)
    x0 = torch.randn(size["batch"], 3, size["image"], size["image"], device=device)
    batch = Batch(x0, torch.zeros(size["batch"], dtype=torch.long), ("",) * size["batch"])
    return lambda: trainer.step_loss(batch)


def diffusers_train(
    size: dict, device: torch.device, precision: str, compile_: bool
) -> Callable[[], object]:
    from diffusers import DDPMScheduler

    net = diffusers_model(size, device).train()
    if compile_:
        net.compile()
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-4)
    ema = [p.detach().clone() for p in net.parameters()]
    params = list(net.parameters())
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    x0 = torch.randn(size["batch"], 3, size["image"], size["image"], device=device)

    def step() -> object:
        t = torch.randint(0, 1000, (size["batch"],), device=device)
        eps = torch.randn_like(x0)
        x_t = scheduler.add_noise(x0, eps, t)
        with autocast(device, precision):  # type: ignore[arg-type]
            loss = nn.functional.mse_loss(net(x_t, t).sample.float(), eps)
        opt.zero_grad(set_to_none=True)
        (scaler.scale(loss) if scaler else loss).backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, params, 1e-4)
        return loss

    return step


def ddpmkit_sample(
    size: dict, device: torch.device, precision: str, compile_: bool, steps: int
) -> Callable[[], object]:
    model = ddpmkit_model(size, device).eval()
    if compile_:
        model.denoiser.compile()
    sampler = create("sampler", "ddim", steps=steps)
    shape = (2 * size["batch"], 3, size["image"], size["image"])
    generator = torch.Generator(device).manual_seed(0)

    def run() -> object:
        with autocast(device, precision):  # type: ignore[arg-type]
            return sampler.sample(model, shape, generator=generator)

    return run


def diffusers_sample(
    size: dict, device: torch.device, precision: str, compile_: bool, steps: int
) -> Callable[[], object]:
    from diffusers import DDIMScheduler

    net = diffusers_model(size, device).eval()
    if compile_:
        net.compile()
    scheduler = DDIMScheduler(num_train_timesteps=1000)
    scheduler.set_timesteps(steps)
    shape = (2 * size["batch"], 3, size["image"], size["image"])
    generator = torch.Generator(device).manual_seed(0)

    def run() -> object:
        x = torch.randn(shape, generator=generator, device=device)
        with torch.inference_mode(), autocast(device, precision):  # type: ignore[arg-type]
            for t in scheduler.timesteps:
                out = net(x, t.to(device).expand(shape[0])).sample
                x = scheduler.step(out.float(), t, x).prev_sample
        return x

    return run


COLUMNS = ("ddpmkit train", "diffusers train", "ddpmkit sample", "diffusers sample")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="cifar10")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seconds", type=float, default=4.0, help="timed seconds per cell")
    parser.add_argument("--sample-steps", type=int, default=20, help="DDIM steps per sample")
    parser.add_argument(
        "--modes", default="fp32,bf16,bf16+compile", help="comma-separated precisions"
    )
    parser.add_argument("--no-diffusers", action="store_true", help="ddpmkit only")
    args = parser.parse_args()
    size, device = SIZES[args.size], torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    params = sum(p.numel() for p in ddpmkit_model(size, device).denoiser.parameters())
    print(f"Machine: {machine()}.\n")
    print(
        f"Size {args.size}: {params / 1e6:.2f} M parameters, training batch {size['batch']}, "
        f"sampling batch {2 * size['batch']} with {args.sample_steps} DDIM steps; "
        f"{args.seconds:.0f} timed seconds per cell after two warm-up calls.\n"
    )
    print(
        "| precision | ddpmkit train img/s | diffusers train img/s | ddpmkit sample img/s "
        "| diffusers sample img/s |"
    )
    print("|---|---:|---:|---:|---:|")
    libraries = ["ddpmkit"] + ([] if args.no_diffusers else ["diffusers"])
    for mode in args.modes.split(","):
        precision, _, extra = mode.partition("+")
        compile_ = extra == "compile"
        cells = {}
        start = time.perf_counter()
        for lib in libraries:
            train = (ddpmkit_train if lib == "ddpmkit" else diffusers_train)(
                size, device, precision, compile_
            )
            cells[f"{lib} train"] = throughput(train, size["batch"], device, args.seconds)
            del train
            sample = (ddpmkit_sample if lib == "ddpmkit" else diffusers_sample)(
                size, device, precision, compile_, args.sample_steps
            )
            cells[f"{lib} sample"] = throughput(sample, 2 * size["batch"], device, args.seconds)
            del sample
            if device.type == "cuda":
                torch.cuda.empty_cache()

        row = [f"{cells[k]:.0f}" if k in cells else "-" for k in COLUMNS]
        print(f"| {mode} | " + " | ".join(row) + " |", flush=True)
        print(f"<!-- {mode}: {time.perf_counter() - start:.0f} s -->", file=sys.stderr)


if __name__ == "__main__":
    main()
