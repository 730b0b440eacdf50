"""The U-Net's compiled channels-last GroupNorm against PyTorch's, CPU fp32, one thread.

Forward + backward of GroupNorm (32 groups), alone and followed by SiLU, at the shapes of the
matched U-Net of ``speed_unet.py`` (batch 8): ddpmkit's kernels on channels-last memory,
PyTorch's on the same memory, and PyTorch's on contiguous memory (what an NCHW network such as
UNet2DModel gets). Then the whole matched U-Net's training step and inference with the kernels
against the same network with PyTorch's GroupNorm and SiLU. Interleaved repetitions; medians
and paired ratios.

``python bench/speed_group_norm.py [--quick]``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from statistics import median

import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import interleaved_samples, machine, paired_ratio
from speed_unet import ddpmkit_unet

from ddpmkit_unet.group_norm import GroupNorm, group_norm, library

SHAPES = ((8, 64, 32, 32), (8, 128, 32, 32), (8, 192, 32, 32), (8, 128, 16, 16), (8, 256, 16, 16))


def _pytorch(x: torch.Tensor, g: int, w: torch.Tensor, b: torch.Tensor, silu: bool) -> torch.Tensor:
    y = F.group_norm(x, g, w, b)
    return F.silu(y) if silu else y


def _ours(x: torch.Tensor, g: int, w: torch.Tensor, b: torch.Tensor, silu: bool) -> torch.Tensor:
    return group_norm(x, g, w, b, silu=silu)


def _norm_step(
    norm: Callable[..., torch.Tensor], x: torch.Tensor, dy: torch.Tensor, silu: bool
) -> Callable[[], None]:
    """Forward and backward of ``norm`` at ``x`` with upstream gradient ``dy``."""
    xg = x.clone().requires_grad_()
    w = torch.randn(x.shape[1], requires_grad=True)
    b = torch.randn(x.shape[1], requires_grad=True)

    def run() -> None:
        xg.grad = w.grad = b.grad = None
        norm(xg, 32, w, b, silu).backward(dy)

    return run


def _unet_calls(net: nn.Module) -> tuple[Callable[[], None], Callable[[], None]]:
    """A training step and an inference call of ``net`` at batch 8."""
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.randint(0, 1000, (8,), generator=torch.Generator().manual_seed(1))

    def step() -> None:
        net.zero_grad(set_to_none=True)
        net(x, t).square().mean().backward()

    def infer() -> None:
        with torch.inference_mode():
            net(x, t)

    return step, infer


def run(quick: bool = False) -> str:
    """The comparison as a markdown section."""
    torch.set_num_threads(1)
    title = "### GroupNorm on channels-last memory"
    if library() is None:
        return f"{title}\n\n(the kernels could not be compiled: no C compiler)\n"
    cl = torch.channels_last
    repeats = 5 if quick else 40
    lines = [
        title,
        "",
        f"Machine: {machine()}.",
        "",
        f"GroupNorm with 32 groups, alone and followed by SiLU, forward + backward, fp32, 1 "
        f"thread; CPU time of {repeats} interleaved repetitions: medians, and the ratios' "
        "medians and interquartile ranges over the pairs.",
        "",
        "| shape | op | ddpmkit, channels-last | PyTorch, channels-last | PyTorch, contiguous "
        "| ddpmkit / PyTorch channels-last | ddpmkit / PyTorch contiguous |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for shape in SHAPES:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(shape, generator=gen)
        dy = torch.randn(shape, generator=gen)
        xl, dyl = x.contiguous(memory_format=cl), dy.contiguous(memory_format=cl)
        for silu in (False, True):
            times = interleaved_samples(
                {
                    "ours": _norm_step(_ours, xl, dyl, silu),
                    "cl": _norm_step(_pytorch, xl, dyl, silu),
                    "contiguous": _norm_step(_pytorch, x, dy, silu),
                },
                repeats,
            )
            ms = {k: f"{median(v) * 1e3:.2f} ms" for k, v in times.items()}
            lines.append(
                f"| {'x'.join(map(str, shape))} | {'GroupNorm + SiLU' if silu else 'GroupNorm'} "
                f"| {ms['ours']} | {ms['cl']} | {ms['contiguous']} | "
                f"{paired_ratio(times['ours'], times['cl'])} | "
                f"{paired_ratio(times['ours'], times['contiguous'])} |"
            )
    torch.manual_seed(0)
    ours = ddpmkit_unet()
    theirs = ddpmkit_unet()
    theirs.load_state_dict(ours.state_dict())
    for module in theirs.modules():
        if isinstance(module, GroupNorm):
            module.kernels = False  # PyTorch's GroupNorm and SiLU, the same parameters
    unet_repeats = 3 if quick else 15
    (step_ours, infer_ours), (step_theirs, infer_theirs) = _unet_calls(ours), _unet_calls(theirs)
    times = interleaved_samples(
        {"ours": step_ours, "pytorch": step_theirs, "ours inf": infer_ours, "pt inf": infer_theirs},
        unet_repeats,
    )
    lines += [
        "",
        f"The matched U-Net of `speed_unet.py` at batch 8 ({unet_repeats} interleaved pairs), "
        f"with the kernels against PyTorch's GroupNorm and SiLU: training step "
        f"{median(times['ours']) * 1e3:.0f} ms against "
        f"{median(times['pytorch']) * 1e3:.0f} ms, a ratio of "
        f"{paired_ratio(times['ours'], times['pytorch'])}; inference "
        f"{median(times['ours inf']) * 1e3:.0f} ms against "
        f"{median(times['pt inf']) * 1e3:.0f} ms, "
        f"{paired_ratio(times['ours inf'], times['pt inf'])}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    print(run(parser.parse_args().quick))
