"""ddpmkit's own ``unet`` as a diffusers ``UNet2DModel`` with the same weights.

Both are the DDPM U-Net of Ho et al. (2020): a sinusoidal time embedding ([sin, cos], through
Linear-SiLU-Linear), residual blocks GroupNorm-SiLU-conv with the embedding added (or as
scale and shift), self-attention after every residual block of the attention levels and in the
middle, strided-conv downsampling, nearest-neighbour-and-conv upsampling, skip connections
after each block. The conversion renames every tensor and splits the fused q/k/v projection;
what diffusers cannot express (conditioning inputs, Fourier features, heads of different sizes)
is refused.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import UNet2DModel
from torch import nn

from ddpmkit import ConfigError


def is_ddpmkit_unet(denoiser: nn.Module) -> bool:
    """Whether ``denoiser`` is the bundled ``unet`` (recognised by its class and module)."""
    cls = type(denoiser)
    return cls.__name__ == "UNet" and cls.__module__.startswith("ddpmkit_unet")


def _head_dim(p: Any) -> int | None:
    """diffusers' single ``attention_head_dim`` for ddpmkit's per-block ``num_heads``."""
    if p.num_heads == 1:
        return None  # diffusers: one head of all the channels, at every level
    widths = {p.base_channels * p.channel_mults[level] for level in p.attention_levels}
    widths.add(p.base_channels * p.channel_mults[-1])  # the middle block
    dims = {w // p.num_heads for w in widths}
    if len(dims) != 1:
        raise ConfigError(
            f"unet: {p.num_heads} heads over attention blocks of {sorted(widths)} channels give "
            "heads of different sizes, which UNet2DModel cannot express (it fixes the head "
            "size); use num_heads = 1, or attention only at the last level"
        )
    return dims.pop()


def unet2d_config(p: Any) -> dict[str, Any]:
    """The ``UNet2DModel`` configuration matching ddpmkit ``unet`` params ``p``."""
    if p.cond_channels or p.cond_embed_dim or p.context_dim:
        raise ConfigError(
            "unet: a conditional U-Net (cond_channels, cond_embed_dim or "
            "context_dim > 0) has no UNet2DModel form"
        )
    if p.time_embedding != "sinusoidal":
        raise ConfigError("unet: time_embedding = 'fourier' has no UNet2DModel form")
    levels = range(len(p.channel_mults))
    attention = set(p.attention_levels)
    return dict(
        sample_size=None,
        in_channels=p.in_channels,
        out_channels=p.out_channels if p.out_channels is not None else p.in_channels,
        flip_sin_to_cos=False,  # ddpmkit's features are [sin, cos]
        freq_shift=0,
        down_block_types=tuple(
            "AttnDownBlock2D" if i in attention else "DownBlock2D" for i in levels
        ),
        up_block_types=tuple(
            "AttnUpBlock2D" if i in attention else "UpBlock2D" for i in reversed(levels)
        ),
        block_out_channels=tuple(p.base_channels * m for m in p.channel_mults),
        layers_per_block=p.num_res_blocks,
        attention_head_dim=_head_dim(p),
        norm_num_groups=p.groups,
        attn_norm_num_groups=p.groups,  # the middle attention normalises as the others do
        norm_eps=1e-5,  # torch's GroupNorm default, which ddpmkit uses
        dropout=p.dropout,
        resnet_time_scale_shift="scale_shift" if p.time_injection == "scale-shift" else "default",
    )


def _resnet(
    src: str, dst: str, state: dict[str, torch.Tensor], out: dict[str, torch.Tensor]
) -> None:
    for a, b in [
        ("norm1", "norm1"),
        ("conv1", "conv1"),
        ("emb_proj.1", "time_emb_proj"),
        ("norm2", "norm2"),
        ("conv2", "conv2"),
        ("skip", "conv_shortcut"),
    ]:
        for leaf in ("weight", "bias"):
            key = f"{src}.{a}.{leaf}"
            if key in state:
                out[f"{dst}.{b}.{leaf}"] = state[key]


def _attention(
    src: str, dst: str, state: dict[str, torch.Tensor], out: dict[str, torch.Tensor]
) -> None:
    for leaf in ("weight", "bias"):
        out[f"{dst}.group_norm.{leaf}"] = state[f"{src}.self_attn.norm.{leaf}"]
        q, k, v = state[f"{src}.self_attn.qkv.{leaf}"].chunk(3, dim=0)
        out[f"{dst}.to_q.{leaf}"], out[f"{dst}.to_k.{leaf}"], out[f"{dst}.to_v.{leaf}"] = q, k, v
        out[f"{dst}.to_out.0.{leaf}"] = state[f"{src}.self_attn.proj.{leaf}"]


def unet_state_dict(p: Any, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ddpmkit ``unet`` weights renamed to ``UNet2DModel``'s."""
    out: dict[str, torch.Tensor] = {}

    def copy(src: str, dst: str) -> None:
        for leaf in ("weight", "bias"):
            out[f"{dst}.{leaf}"] = state[f"{src}.{leaf}"]

    copy("conv_in", "conv_in")
    copy("time_embed.mlp.0", "time_embedding.linear_1")
    copy("time_embed.mlp.2", "time_embedding.linear_2")
    n = p.num_res_blocks
    for k in range(n * len(p.channel_mults)):
        level, j = divmod(k, n)
        _resnet(f"down_res.{k}", f"down_blocks.{level}.resnets.{j}", state, out)
        if f"down_attn.{k}.self_attn.qkv.weight" in state:
            _attention(f"down_attn.{k}", f"down_blocks.{level}.attentions.{j}", state, out)
    for level in range(len(p.channel_mults) - 1):
        copy(f"downsample.{level}.conv", f"down_blocks.{level}.downsamplers.0.conv")
    _resnet("mid_res1", "mid_block.resnets.0", state, out)
    _attention("mid_attn", "mid_block.attentions.0", state, out)
    _resnet("mid_res2", "mid_block.resnets.1", state, out)
    for k in range((n + 1) * len(p.channel_mults)):
        i, j = divmod(k, n + 1)
        _resnet(f"up_res.{k}", f"up_blocks.{i}.resnets.{j}", state, out)
        if f"up_attn.{k}.self_attn.qkv.weight" in state:
            _attention(f"up_attn.{k}", f"up_blocks.{i}.attentions.{j}", state, out)
    for i in range(len(p.channel_mults) - 1):
        copy(f"upsample.{i}.conv", f"up_blocks.{i}.upsamplers.0.conv")
    copy("norm_out", "conv_norm_out")
    copy("conv_out", "conv_out")
    return out


def to_unet2d(denoiser: nn.Module, sample_size: int) -> Any:
    """A ``UNet2DModel`` computing what the bundled ``unet`` ``denoiser`` computes."""
    p: Any = getattr(denoiser, "params", None)
    config = unet2d_config(p)
    config["sample_size"] = sample_size
    unet: Any = UNet2DModel(**config)  # typed loosely by diffusers
    state = {k: v.detach().to("cpu", torch.float32) for k, v in denoiser.state_dict().items()}
    renamed = unet_state_dict(p, state)
    missing, unexpected = unet.load_state_dict(renamed, strict=False)
    if missing or unexpected or len(renamed) != len(state) + _split_extra(p, state):
        raise ConfigError(
            f"unet: the weights do not map onto UNet2DModel (missing {list(missing)[:5]}, "
            f"unexpected {list(unexpected)[:5]})"
        )
    return unet.eval()


def _split_extra(p: Any, state: dict[str, torch.Tensor]) -> int:
    """Tensors the conversion adds: each fused qkv weight and bias becomes three (+4)."""
    return 4 * sum(1 for k in state if k.endswith("self_attn.qkv.weight"))
