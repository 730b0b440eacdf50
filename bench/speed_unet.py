"""ddpmkit's U-Net against diffusers' UNet2DModel at a matched configuration, CPU fp32.

Both networks: 3x32x32 images, channels 64-128-128, 2 residual blocks per level (3 on the way
up), self-attention at the 16x16 level and in the middle, 4 heads of 32 channels, GroupNorm
with 32 groups, the time embedding added in every residual block (Ho et al.), no dropout:
6.47 M parameters each. A training step (forward, backward of a mean square) and inference
(forward in inference mode), batch 8, interleaved repetitions (ratios: medians over the
pairs, with their interquartile range); each library in its
default memory layout, and both in channels-last.

``python bench/speed_unet.py [--quick]``; needs ``pip install diffusers``.
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

from ddpmkit import create


def ddpmkit_unet(**overrides: object) -> nn.Module:
    params: dict[str, object] = {
        "in_channels": 3,
        "base_channels": 64,
        "channel_mults": (1, 2, 2),
        "num_res_blocks": 2,
        "attention_levels": (1,),
        "num_heads": 4,
        "groups": 32,
        "time_injection": "add",
    }
    params.update(overrides)
    return create("denoiser", "unet", **params)


def diffusers_unet(**overrides: object) -> nn.Module:
    from diffusers import UNet2DModel

    params: dict[str, object] = {
        "sample_size": 32,
        "in_channels": 3,
        "out_channels": 3,
        "block_out_channels": (64, 128, 128),
        "layers_per_block": 2,
        "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        "attention_head_dim": 32,
    }
    params.update(overrides)
    return UNet2DModel(**params)


def parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def contenders(
    batch: int, size: int, ours: nn.Module, theirs: nn.Module
) -> dict[str, Callable[[], None]]:
    """Inference and training step of both networks, default layout and channels-last."""
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    t = torch.randint(0, 1000, (batch,), generator=torch.Generator().manual_seed(1))
    fns: dict[str, Callable[[], None]] = {}
    for layout in ("default", "channels-last"):
        a, b = ours, theirs
        xl = x
        if layout == "channels-last":
            a = _copy(ours).to(memory_format=torch.channels_last)
            b = _copy(theirs).to(memory_format=torch.channels_last)
            xl = x.contiguous(memory_format=torch.channels_last)
        calls = {"ddpmkit": _call(a, xl, t, False), "diffusers": _call(b, xl, t, True)}
        for name, call in calls.items():
            fns[f"{name} inference {layout}"] = _inference(call)
            fns[f"{name} train {layout}"] = _train_step(call, a if name == "ddpmkit" else b)
    return fns


def _copy(module: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(module)


def _call(
    net: nn.Module, x: torch.Tensor, t: torch.Tensor, diffusers: bool
) -> Callable[[], torch.Tensor]:
    if diffusers:
        return lambda: net(x, t).sample
    return lambda: net(x, t)


def _inference(call: Callable[[], torch.Tensor]) -> Callable[[], None]:
    def run() -> None:
        with torch.inference_mode():
            call()

    return run


def _train_step(call: Callable[[], torch.Tensor], net: nn.Module) -> Callable[[], None]:
    def run() -> None:
        net.zero_grad(set_to_none=True)
        call().square().mean().backward()

    return run


def run(quick: bool = False) -> str:
    """The comparison as a markdown section."""
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        theirs = diffusers_unet()
    except ImportError:
        return "### U-Net\n\n(diffusers is not installed: `pip install diffusers`)\n"
    torch.manual_seed(0)
    ours = ddpmkit_unet()
    n_ours, n_theirs = parameters(ours), parameters(theirs)
    batch = 8
    repeats = 3 if quick else 25
    times = interleaved_samples(contenders(batch, 32, ours, theirs), repeats)
    lines = [
        "### U-Net against diffusers' UNet2DModel",
        "",
        f"Machine: {machine()}.",
        "",
        f"Matched configuration (channels 64-128-128, 2 blocks per level, attention at 16x16 "
        f"and in the middle, 4 heads, 32 groups, additive time embedding): ddpmkit "
        f"{n_ours / 1e6:.3f} M parameters, diffusers {n_theirs / 1e6:.3f} M "
        f"({abs(n_ours - n_theirs) / n_theirs:.1%} apart). Batch {batch} of 3x32x32, fp32, "
        f"1 thread; CPU time of {repeats} interleaved repetitions of all eight: medians, and "
        "the ratio's median and interquartile range over the paired repetitions.",
        "",
        "| measure | layout | ddpmkit | diffusers | ratio (target <= 1.0) |",
        "|---|---|---:|---:|---:|",
    ]
    for what in ("train", "inference"):
        for layout in ("default", "channels-last"):
            a = times[f"ddpmkit {what} {layout}"]
            b = times[f"diffusers {what} {layout}"]
            label = "training step (forward + backward)" if what == "train" else "inference"
            lines.append(
                f"| {label} | {layout} | {median(a) * 1e3:.0f} ms | {median(b) * 1e3:.0f} ms | "
                f"{paired_ratio(a, b)} |"
            )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    print(run(parser.parse_args().quick))
