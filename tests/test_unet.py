"""Tests of the bundled U-Net denoiser plugin (Ho et al. 2020; Dhariwal & Nichol 2021)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

import ddpmkit
from ddpmkit import Conditioning
from ddpmkit_unet import SelfAttention2d, SinusoidalEmbedding, UNet

TINY: dict[str, Any] = {
    "in_channels": 3,
    "base_channels": 8,
    "channel_mults": (1, 2),
    "num_res_blocks": 1,
    "num_heads": 2,
}


def make(seed: int = 0, **overrides: Any) -> UNet:
    """A tiny U-Net, deterministic for ``seed``."""
    torch.manual_seed(seed)
    return UNet(UNet.Params(**{**TINY, **overrides}))


def unzero(model: nn.Module, seed: int = 1) -> nn.Module:
    """Re-initialise every all-zero parameter (conv_out, attention projections) at random."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


def inputs(b: int = 2, c: int = 3, h: int = 16, w: int | None = None) -> tuple[torch.Tensor, ...]:
    """A batch ``x_t`` and training indices ``t``."""
    gen = torch.Generator().manual_seed(123)
    x = torch.randn(b, c, h, w or h, generator=gen)
    t = torch.randint(0, 1000, (b,), generator=gen)
    return x, t


@pytest.mark.parametrize(
    ("overrides", "size", "out_c"),
    [
        ({}, (16, 16), 3),
        ({"out_channels": 6}, (16, 16), 6),
        ({"in_channels": 1, "channel_mults": (1, 2, 2), "num_res_blocks": 2}, (16, 16), 1),
        ({"channel_mults": (1,)}, (5, 7), 3),
        ({"attention_levels": (1,)}, (8, 16), 3),
    ],
)
def test_output_shape(overrides: dict[str, Any], size: tuple[int, int], out_c: int) -> None:
    model = make(**overrides)
    x, t = inputs(c=model.in_channels, h=size[0], w=size[1])
    y = model(x, t)
    assert y.shape == (2, out_c, *size)
    assert model.out_channels == out_c
    assert y.dtype == torch.float32


def test_output_starts_at_zero() -> None:
    x, t = inputs()
    assert torch.count_nonzero(make()(x, t)) == 0


@pytest.mark.parametrize("embedding", ["sinusoidal", "fourier"])
@pytest.mark.parametrize("injection", ["add", "scale-shift"])
def test_time_embedding_matters(embedding: str, injection: str) -> None:
    model = unzero(make(time_embedding=embedding, time_injection=injection)).eval()
    x, _ = inputs()
    y0 = model(x, torch.tensor([0, 0]))
    y1 = model(x, torch.tensor([0, 500]))
    assert torch.isfinite(y0).all()
    assert torch.equal(y0[0], y1[0])
    assert not torch.allclose(y0[1], y1[1])


def test_sinusoidal_embedding_values() -> None:
    emb = SinusoidalEmbedding(8)(torch.tensor([0, 3]))
    assert emb.shape == (2, 8)
    assert emb.dtype == torch.float32
    assert torch.equal(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    # first frequency is 1: sin(3), cos(3); last is 10000 ** (-3 / 4)
    torch.testing.assert_close(emb[1, 0], torch.tensor(math.sin(3.0)))
    torch.testing.assert_close(emb[1, 4], torch.tensor(math.cos(3.0)))
    torch.testing.assert_close(emb[1, 3], torch.tensor(math.sin(3.0 * 10000 ** (-3 / 4))))
    assert SinusoidalEmbedding(7)(torch.tensor([1])).shape == (1, 7)


def test_fourier_frequencies_are_saved() -> None:
    a = make(seed=0, time_embedding="fourier", fourier_scale=4.0)
    b = make(seed=1, time_embedding="fourier", fourier_scale=4.0)
    key = "time_embed.features.freqs"
    assert key in a.state_dict()
    assert not torch.equal(a.state_dict()[key], b.state_dict()[key])
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.state_dict()[key], b.state_dict()[key])


def _count_self_attention(model: UNet, x: torch.Tensor, t: torch.Tensor) -> int:
    calls = []
    handles = [
        m.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[-2]))
        for m in model.modules()
        if isinstance(m, SelfAttention2d)
    ]
    model(x, t)
    for handle in handles:
        handle.remove()
    return len(calls)


def test_attention_is_built_at_the_chosen_levels() -> None:
    model = make(attention_levels=(1,))
    # 1 down block + 2 up blocks at level 1, plus the middle block, at any input size
    assert _count_self_attention(model, *inputs(h=16)) == 4
    assert _count_self_attention(model, *inputs(h=32)) == 4
    assert _count_self_attention(make(), *inputs(h=16)) == 1
    assert _count_self_attention(make(attention_levels=(0, 1)), *inputs(h=16)) == 7
    # only the blocks that run exist, so every parameter gets a gradient
    n_without = sum(p.numel() for p in make().parameters())
    n_with = sum(p.numel() for p in model.parameters())
    assert n_with > n_without


def test_attention_changes_the_output() -> None:
    with_attn = unzero(make(attention_levels=(0,)))
    without = make()
    without.load_state_dict(with_attn.state_dict(), strict=False)
    x, t = inputs()
    assert not torch.allclose(with_attn(x, t), without(x, t))


def test_cond_channels() -> None:
    model = unzero(make(cond_channels=2))
    x, t = inputs()
    c1 = Conditioning(channels=torch.randn(2, 2, 16, 16))
    c2 = Conditioning(channels=torch.randn(2, 2, 16, 16))
    y1 = model(x, t, c1)
    assert y1.shape == (2, 3, 16, 16)
    assert not torch.allclose(y1, model(x, t, c2))
    with pytest.raises(ValueError, match=r"cond\.channels must have shape"):
        model(x, t, Conditioning(channels=torch.randn(2, 3, 16, 16)))
    with pytest.raises(ValueError, match=r"needs cond\.channels"):
        model(x, t)
    with pytest.raises(ValueError, match="cond_channels=0"):
        make()(x, t, c1)


def test_cond_embedding() -> None:
    model = unzero(make(cond_embed_dim=5))
    x, t = inputs()
    e = torch.randn(2, 5)
    y = model(x, t, Conditioning(embedding=e))
    assert not torch.allclose(y, model(x, t))
    assert not torch.allclose(y, model(x, t, Conditioning(embedding=e + 1)))
    with pytest.raises(ValueError, match=r"cond\.embedding must have shape \(2, 5\)"):
        model(x, t, Conditioning(embedding=torch.randn(2, 4)))
    with pytest.raises(ValueError, match="cond_embed_dim=0"):
        make()(x, t, Conditioning(embedding=e))


def test_cross_attention_uses_context_and_respects_mask() -> None:
    model = unzero(make(context_dim=6, attention_levels=(1,))).eval()
    x, t = inputs()
    ctx = torch.randn(2, 4, 6)
    mask = torch.tensor([[True, True, False, False], [True, False, True, True]])
    y = model(x, t, Conditioning(context=ctx, context_mask=mask))
    assert y.shape == (2, 3, 16, 16)
    assert not torch.allclose(y, model(x, t, Conditioning(context=ctx + 1, context_mask=mask)))
    assert not torch.allclose(y, model(x, t, Conditioning(context=ctx)))  # mask matters
    changed = ctx.clone()
    changed[0, 2:] = torch.randn(2, 6) * 100  # masked-out tokens of sample 0
    changed[1, 1] = -50.0
    assert torch.equal(y, model(x, t, Conditioning(context=changed, context_mask=mask)))
    # a sample with every token masked behaves as if there were no context
    none_real = torch.tensor([[False] * 4, [True] * 4])
    y_none = model(x, t, Conditioning(context=ctx, context_mask=none_real))
    assert torch.isfinite(y_none).all()
    torch.testing.assert_close(y_none[0], model(x, t)[0])


def test_context_errors() -> None:
    x, t = inputs()
    with pytest.raises(ValueError, match="context_dim=0"):
        make()(x, t, Conditioning(context=torch.randn(2, 4, 6)))
    model = make(context_dim=6)
    with pytest.raises(ValueError, match=r"cond\.context must have shape \(2, L, 6\)"):
        model(x, t, Conditioning(context=torch.randn(2, 4, 5)))
    with pytest.raises(ValueError, match=r"without cond\.context"):
        model(x, t, Conditioning(context_mask=torch.ones(2, 4, dtype=torch.bool)))
    with pytest.raises(ValueError, match="context_mask must have shape"):
        bad_mask = torch.ones(2, 3, dtype=torch.bool)
        model(x, t, Conditioning(context=torch.randn(2, 4, 6), context_mask=bad_mask))


def test_bf16_autocast_on_cpu() -> None:
    model = unzero(
        make(
            attention_levels=(1,),
            cond_channels=1,
            cond_embed_dim=3,
            context_dim=4,
            time_embedding="fourier",
        )
    )
    x, t = inputs()
    cond = Conditioning(
        channels=torch.randn(2, 1, 16, 16),
        embedding=torch.randn(2, 3),
        context=torch.randn(2, 5, 4),
        context_mask=torch.tensor([[True] * 5, [True, True, False, False, False]]),
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x, t, cond)
    assert y.shape == (2, 3, 16, 16)
    assert y.dtype in (torch.bfloat16, torch.float32)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.float(), model(x, t, cond), atol=0.1, rtol=0.1)


def test_gradients_reach_every_parameter() -> None:
    model = unzero(make(attention_levels=(0, 1), cond_channels=1, cond_embed_dim=3, context_dim=4))
    x, t = inputs()
    cond = Conditioning(
        channels=torch.randn(2, 1, 16, 16),
        embedding=torch.randn(2, 3),
        context=torch.randn(2, 5, 4),
    )
    model(x, t, cond).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert missing == []


def test_dropout_only_in_training() -> None:
    model = unzero(make(dropout=0.5))
    x, t = inputs()
    assert not torch.equal(model(x, t), model(x, t))
    model.eval()
    assert torch.equal(model(x, t), model(x, t))


def test_create_builds_it() -> None:
    model = ddpmkit.create(
        "denoiser",
        "unet",
        in_channels=1,
        out_channels=2,
        **{k: v for k, v in TINY.items() if k != "in_channels"},
    )
    assert isinstance(model, UNet)
    assert isinstance(model, ddpmkit.Denoiser)
    assert (model.in_channels, model.out_channels) == (1, 2)
    assert model.downsample_factor == 2
    x, t = inputs(c=1, h=8)
    assert model(x, t).shape == (2, 2, 8, 8)
    assert UNet().downsample_factor == 4  # defaults: channel_mults (1, 2, 2)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"channel_mults": ()}, "channel_mults"),
        ({"channel_mults": (1, 0)}, "channel_mults"),
        ({"base_channels": 12}, "groups=8 must divide"),
        ({"groups": 3}, "groups=3 must divide"),
        ({"num_heads": 3}, "num_heads=3 must divide"),
        ({"dropout": 1.0}, "dropout"),
        ({"time_embedding": "learned"}, "time_embedding"),
        ({"time_injection": "concat"}, "time_injection"),
        ({"context_dim": -1}, "context_dim"),
        ({"image_size": 32}, "image_size: unknown key"),
    ],
)
def test_bad_params_raise_config_error(bad: dict[str, Any], message: str) -> None:
    with pytest.raises(ddpmkit.ConfigError, match=message):
        ddpmkit.create("denoiser", "unet", **{**TINY, **bad})


def test_input_errors() -> None:
    model = make(channel_mults=(1, 2, 2))
    x, t = inputs(h=10, w=16)
    with pytest.raises(ValueError, match=r"10x16 is not divisible by its downsample factor 4"):
        model(x, t)
    x, t = inputs(h=16)
    with pytest.raises(ValueError, match="3 input channels"):
        model(x[:, :2], t)
    with pytest.raises(ValueError, match="t of shape"):
        model(x, t[:1])


@pytest.mark.parametrize("checkpointing", [False, True])
def test_channels_last_inputs_give_the_same_outputs_and_gradients(checkpointing: bool) -> None:
    """A channels-last network on channels-last inputs (``train.channels_last``), with or
    without gradient checkpointing: the same numbers, up to float32 summation order."""
    model = unzero(make(attention_levels=(1,)))
    x, t = inputs()

    def step(net: nn.Module, z: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        net.zero_grad(set_to_none=True)
        out = net(z, t)
        out.square().mean().backward()
        return out.detach(), [p.grad for p in net.parameters() if p.grad is not None]

    plain, plain_grads = step(model, x)
    model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    model.gradient_checkpointing = checkpointing
    fast, fast_grads = step(model, x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    assert len(fast_grads) == len(plain_grads) == len(list(model.parameters()))
    # some gradients are zero but for rounding (a bias a GroupNorm of one-channel groups
    # removes): the tolerance is relative to the largest gradient
    scale = max(float(g.abs().max()) for g in plain_grads)
    for a, b in zip(fast_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6 * scale)
