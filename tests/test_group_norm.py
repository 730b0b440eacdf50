"""The U-Net's GroupNorm: compiled channels-last kernels against PyTorch's, and the fallbacks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - the usual name

import ddpmkit_unet.group_norm as gn
from ddpmkit_unet import UNet
from ddpmkit_unet.group_norm import GroupNorm, group_norm

CL = torch.channels_last

needs_kernels = pytest.mark.skipif(gn.library() is None, reason="no C compiler for the kernels")


def channels_last(*shape: int, seed: int = 0, mean: float = 0.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=gen) * 2 + mean).contiguous(memory_format=CL)


def reference(
    x: torch.Tensor,
    groups: int,
    w: torch.Tensor,
    b: torch.Tensor,
    dy: torch.Tensor,
    silu: bool,
    e: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """``(y, dx, dw, db, de)`` of PyTorch's GroupNorm of ``x + e`` (then SiLU) in float64:
    the exact answer."""
    x64, w64, b64, e64 = (t.detach().double().requires_grad_() for t in (x, w, b, e))
    y = F.group_norm(x64 + e64[:, :, None, None], groups, w64, b64)
    if silu:
        y = F.silu(y)
    y.backward(dy.double())
    grads = (x64.grad, w64.grad, b64.grad, e64.grad)
    assert all(g is not None for g in grads)
    return (y.detach(), *grads)  # type: ignore[return-value]


def relative_error(a: torch.Tensor, ref: torch.Tensor, scale: float = 0.0) -> float:
    """Max error over the reference's largest value (or ``scale``, when larger)."""
    return float((a.detach().double() - ref).abs().max() / max(ref.abs().max().item(), scale))


@needs_kernels
@pytest.mark.parametrize("shifted", [False, True])
@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize(
    ("shape", "groups"),
    [
        ((4, 64, 16, 16), 32),  # two channels per group, 4 blocks of 64 pixels
        ((2, 48, 29, 31), 8),  # channels no multiple of the vector width, a partial block
        ((1, 96, 27, 27), 96),  # one channel per group (instance norm), batch 1
        ((3, 24, 33, 30), 1),  # one group (layer norm over C, H, W)
    ],
)
def test_kernels_match_float64(
    shape: tuple[int, int, int, int], groups: int, silu: bool, shifted: bool
) -> None:
    x = channels_last(*shape, mean=3.0)
    dy = channels_last(*shape, seed=1)
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(shape[1], generator=gen).requires_grad_()
    b = torch.randn(shape[1], generator=gen).requires_grad_()
    # a per-(sample, channel) shift such as the time embedding, or none (its gradient is 0)
    e = (torch.randn(shape[:2], generator=gen) * 3).requires_grad_()
    xg = x.clone().requires_grad_()
    y = group_norm(xg, groups, w, b, silu=silu, shift=e if shifted else None)
    y.backward(dy)
    assert y.grad_fn is not None and "GroupNormChannelsLast" in type(y.grad_fn).__name__
    assert y.is_contiguous(memory_format=CL) and xg.grad is not None
    assert xg.grad.is_contiguous(memory_format=CL)
    # float32 against float64: PyTorch's own float32 kernels are 1e-6 - 1e-5 off (sums of up
    # to ~5e4 terms); the kernels sum in float within 64 pixels and in double beyond, and
    # their exponential is good to a few float32 ulps
    exact_answers = reference(x, groups, w, b, dy, silu, e if shifted else torch.zeros_like(e))
    ours_all = (y, xg.grad, w.grad, b.grad, e.grad if shifted else None)
    # the shift's gradient sums dx over pixels, and is exactly 0 with one channel per group
    # (a per-channel constant is normalized away): measured against the size of what it sums
    scales = (0.0, 0.0, 0.0, 0.0, exact_answers[1].abs().sum((2, 3)).max().item())
    for ours, exact, scale in zip(ours_all, exact_answers, scales, strict=True):
        if ours is not None:  # None: no shift given
            assert relative_error(ours, exact, scale) < 2e-6


@needs_kernels
def test_silu_at_extreme_inputs() -> None:
    # u = beta exactly (x = 0, so mean 0 and u = 0 * scale + beta), from -100 to 100 and a
    # NaN: the exponential's clamping and the NaN's path through it
    x = torch.zeros(1, 256, 16, 16).contiguous(memory_format=CL)
    w = torch.ones(256)
    b = torch.linspace(-100, 100, 256)
    b[7] = float("nan")
    ours = group_norm(x, 256, w, b, silu=True)[0, :, 0, 0]
    exact = F.silu(b.double())
    assert ours[7].isnan() and not ours[torch.arange(256) != 7].isnan().any()
    keep = torch.arange(256) != 7
    torch.testing.assert_close(ours[keep].double(), exact[keep], rtol=1e-6, atol=1e-30)


@needs_kernels
def test_a_large_mean_does_not_cancel_the_variance() -> None:
    # std 1e-2 on a mean of 1e3: E[x^2] - E[x]^2 in float32 would be all rounding error
    x = (channels_last(2, 32, 32, 32) * 5e-3 + 1e3).contiguous(memory_format=CL)
    w, b = torch.ones(32), torch.zeros(32)
    exact = F.group_norm(x.double(), 8, w.double(), b.double())
    ours = group_norm(x, 8, w, b)
    # x itself is rounded to float32 (ulp 6e-5 at 1e3, so ~1e-2 of a std): the error that
    # rounding alone carries into xhat = (x - mean) / std
    assert (ours.double() - exact).abs().max() < 2e-2
    assert (ours.double() - exact).pow(2).mean().sqrt() < 5e-3


@needs_kernels
def test_bit_identical_for_any_thread_count() -> None:
    # each block's sums are added in a fixed order whoever computes them
    x, dy = channels_last(4, 64, 24, 24), channels_last(4, 64, 24, 24, seed=1)
    w, b, e = torch.randn(64), torch.randn(64), torch.randn(4, 64)
    runs = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            xg, wg, bg, eg = (t.clone().requires_grad_() for t in (x, w, b, e))
            y = group_norm(xg, 16, wg, bg, silu=True, shift=eg)
            y.backward(dy)
            runs.append((y, xg.grad, wg.grad, bg.grad, eg.grad))
    finally:
        torch.set_num_threads(threads)
    for run in runs[1:]:
        for a, ref in zip(run, runs[0], strict=True):
            assert a is not None and ref is not None and torch.equal(a, ref)


def pytorch_group_norm_silu(
    x: torch.Tensor,
    groups: int,
    w: torch.Tensor,
    b: torch.Tensor,
    silu: bool = False,
    shift: torch.Tensor | None = None,
) -> torch.Tensor:
    if shift is not None:
        x = x + shift[:, :, None, None]
    y = F.group_norm(x, groups, w, b)
    return F.silu(y) if silu else y


@needs_kernels
@pytest.mark.parametrize("silu", [False, True])
def test_second_derivatives_are_pytorch_s(silu: bool) -> None:
    # an R1-style penalty: the gradient's norm, differentiated again (create_graph=True)
    def penalty(norm: object) -> tuple[torch.Tensor, ...]:
        x = channels_last(2, 64, 32, 32).requires_grad_()
        w = torch.linspace(0.5, 1.5, 64).requires_grad_()
        b = torch.linspace(-1, 1, 64).requires_grad_()
        e = torch.linspace(-2, 2, 128).view(2, 64).requires_grad_()
        y = norm(x, 32, w, b, silu=silu, shift=e)  # type: ignore[operator]
        assert ("GroupNormChannelsLast" in type(y.grad_fn).__name__) == (norm is group_norm)
        (gx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
        gx.square().sum().backward()
        grads = (x.grad, w.grad, b.grad, e.grad)
        assert all(g is not None for g in grads)
        return (gx.detach(), *grads)  # type: ignore[return-value]

    # the kernels' forward, then PyTorch's ops for both derivatives: float32 rounding apart
    for ours, theirs in zip(penalty(group_norm), penalty(pytorch_group_norm_silu), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


@needs_kernels
def test_nan_spreads_over_its_group_only_as_in_pytorch() -> None:
    x = channels_last(2, 64, 16, 16)
    x[1, 5, 3, 4] = float("nan")
    w, b = torch.randn(64), torch.randn(64)
    ours, theirs = group_norm(x, 32, w, b), F.group_norm(x, 32, w, b)
    assert torch.equal(ours.isnan(), theirs.isnan())
    assert ours[1, 4:6].isnan().all() and ours.isnan().sum() == 2 * 16 * 16


def test_calls_the_kernels_do_not_cover_are_pytorch_s() -> None:
    w, b = torch.randn(64), torch.randn(64)
    x = channels_last(2, 64, 32, 32)
    cases = {
        "contiguous": x.contiguous(),
        "float64": x.double(),
        "bfloat16": x.bfloat16(),
        "small": channels_last(1, 64, 8, 8),
    }
    for name, t in cases.items():
        wt, bt = w.to(t.dtype), b.to(t.dtype)
        assert torch.equal(group_norm(t, 32, wt, bt), F.group_norm(t, 32, wt, bt)), name
    # no affine parameters, and a group count that does not divide the channels (the error
    # is PyTorch's own)
    assert torch.equal(group_norm(x, 32), F.group_norm(x, 32))
    with pytest.raises(RuntimeError, match="divisible"):
        group_norm(x, 7, torch.ones(64), torch.zeros(64))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(group_norm(x, 32, w, b), F.group_norm(x, 32, w, b))


@needs_kernels
def test_torch_func_transforms_run_pytorch_s_kernels() -> None:
    x = channels_last(3, 64, 32, 32)
    w, b = torch.randn(64), torch.randn(64)
    batched = torch.func.vmap(lambda s: group_norm(s[None], 32, w, b)[0])(x)
    torch.testing.assert_close(batched, F.group_norm(x, 32, w, b), rtol=1e-5, atol=1e-5)
    grad = torch.func.grad(lambda s: group_norm(s, 32, w, b).square().sum())(x)
    xg = x.clone().requires_grad_()
    F.group_norm(xg, 32, w, b).square().sum().backward()
    torch.testing.assert_close(grad, xg.grad, rtol=1e-5, atol=1e-5)


@needs_kernels
@pytest.mark.parametrize("injection", ["add", "scale-shift"])
def test_the_unet_gives_pytorch_s_result_and_state_dict(
    injection: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    kernel = gn._forward
    monkeypatch.setattr(gn, "_forward", lambda *a: calls.append(a[0].shape) or kernel(*a))
    torch.manual_seed(0)
    params = UNet.Params(
        in_channels=3, base_channels=32, channel_mults=(1, 2), groups=8, time_injection=injection
    )
    ours = UNet(params)
    theirs = UNet(params)
    for module in theirs.modules():
        if isinstance(module, GroupNorm):
            module.kernels = False
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(4, 3, 32, 32)
    t = torch.tensor([1, 10, 100, 500])
    out_ours, out_theirs = ours(x, t), theirs(x, t)
    assert len(calls) >= 6  # the 32x32 level's norms, at least, ran the kernels
    out_ours.square().mean().backward()
    out_theirs.square().mean().backward()
    # float32 networks summing in different orders: ~1e-6 relative drift through 20 layers
    torch.testing.assert_close(out_ours, out_theirs, rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-3, atol=1e-6, msg=name)


@pytest.fixture
def fresh_library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty kernel cache and a forgotten library; the real one is restored afterwards."""
    monkeypatch.setenv("DDPMKIT_CACHE_DIR", str(tmp_path))
    gn.library.cache_clear()
    yield tmp_path
    gn.library.cache_clear()


def test_without_a_compiler_pytorch_runs(
    fresh_library: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CC", "no-such-compiler")
    assert gn.library() is None
    x = channels_last(2, 64, 32, 32)
    assert torch.equal(group_norm(x, 32), F.group_norm(x, 32))


def test_a_failing_compiler_leaves_no_file(
    fresh_library: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CC", "false")
    assert gn.library() is None
    assert list(fresh_library.iterdir()) == []


def test_the_switch_turns_the_kernels_off(
    fresh_library: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DDPMKIT_NATIVE_KERNELS", "0")
    assert gn.library() is None
    assert list(fresh_library.iterdir()) == []


@needs_kernels
def test_compiled_once_then_reused(fresh_library: Path) -> None:
    assert gn.library() is not None
    (built,) = fresh_library.iterdir()
    stamp = built.stat().st_mtime_ns
    gn.library.cache_clear()
    assert gn.library() is not None
    assert [p.name for p in fresh_library.iterdir()] == [built.name]
    assert built.stat().st_mtime_ns == stamp
