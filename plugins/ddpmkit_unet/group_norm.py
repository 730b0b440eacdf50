"""GroupNorm (Wu & He 2018), alone or followed by SiLU, with a fast CPU path for channels-last
float32 activations.

On the CPU the U-Net keeps its activations channels-last, the convolutions' fast layout, and
there PyTorch's GroupNorm is two to three times slower than on contiguous memory when a group
holds few channels. ``group_norm.c`` normalizes channels-last memory in about the time of
PyTorch's contiguous kernels, and applies the SiLU that follows most of the U-Net's
GroupNorms in the same pass (the normalized tensor is never stored). It is compiled with the
machine's C compiler on first use and cached in ``DDPMKIT_CACHE_DIR`` (default
``$XDG_CACHE_HOME/ddpmkit``, ``~/.cache/ddpmkit``). Without a compiler, or with
``DDPMKIT_NATIVE_KERNELS=0``, every call is PyTorch's own; so is every call the kernels do not
cover (GPUs, other dtypes and layouts, autocast, ``torch.compile``, ``torch.func`` transforms,
small tensors).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the usual name
from torch import nn
from torch.autograd.function import FunctionCtx

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("group_norm.c")
_FLAGS: tuple[str, ...] = ("-O3", "-march=native", "-std=c99", "-fPIC", "-shared")
if platform.machine().lower() in ("x86_64", "amd64"):
    # AVX-512 where the CPU has it: the SiLU's exponential is compute-bound
    _FLAGS += ("-mprefer-vector-width=512",)
# below this many elements the Python around a call costs what the kernels save
_MIN_ELEMENTS = 1 << 16


def cache_dir() -> Path:
    """Where compiled kernels are kept: ``DDPMKIT_CACHE_DIR``, else ``$XDG_CACHE_HOME/ddpmkit``
    (``~/.cache/ddpmkit``)."""
    if os.environ.get("DDPMKIT_CACHE_DIR"):
        return Path(os.environ["DDPMKIT_CACHE_DIR"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "ddpmkit"


def _cpu_model() -> str:
    """The CPU's model and features (``-march=native`` code is reused only on the same kind
    of CPU)."""
    try:
        first = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    except OSError:
        return platform.processor() or platform.machine()
    return "\n".join(line for line in first.splitlines() if line.startswith(("model", "flags")))


def _compile(compiler: str, out: Path, openmp: bool) -> bool:
    """Compile the kernels into the shared library ``out``, atomically; whether it worked."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    except OSError as err:
        log.debug("no cache folder for the GroupNorm kernels: %s", err)
        return False
    os.close(fd)
    flags = [*_FLAGS, "-fopenmp"] if openmp else list(_FLAGS)
    try:
        done = subprocess.run(
            [compiler, *flags, "-o", tmp, str(_SOURCE), "-lm"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            log.debug("compiling %s failed:\n%s", _SOURCE.name, done.stderr)
            return False
        os.replace(tmp, out)
        return True
    except (OSError, subprocess.SubprocessError) as err:
        log.debug("compiling %s failed: %s", _SOURCE.name, err)
        return False
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels, built on first use (with OpenMP when the compiler has it);
    ``None`` when they cannot be (no C compiler, no writable cache, or
    ``DDPMKIT_NATIVE_KERNELS=0``), and PyTorch's GroupNorm runs instead."""
    if os.environ.get("DDPMKIT_NATIVE_KERNELS", "1") == "0":
        return None
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        log.debug("no C compiler: GroupNorm runs PyTorch's kernels")
        return None
    parts = (_SOURCE.read_bytes(), " ".join(_FLAGS).encode(), compiler.encode())
    key = hashlib.sha256(b"\0".join((*parts, _cpu_model().encode()))).hexdigest()[:16]
    for openmp in (True, False):
        path = cache_dir() / f"group_norm-{key}{'' if openmp else '-serial'}.so"
        if path.exists() or _compile(compiler, path, openmp):
            try:
                lib = ctypes.CDLL(str(path))
            except OSError as err:
                log.debug("loading %s failed: %s", path, err)
                continue
            _declare(lib)
            return lib
    return None


def _declare(lib: ctypes.CDLL) -> None:
    """The C signatures of ``gn_forward`` and ``gn_backward``."""
    ptr, i64, c_int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.gn_forward.argtypes = [ptr] * 7 + [i64] * 4 + [ctypes.c_double, c_int, c_int]
    lib.gn_forward.restype = c_int
    lib.gn_backward.argtypes = [ptr] * 11 + [i64] * 4 + [c_int, c_int]
    lib.gn_backward.restype = c_int


def _covered(x: torch.Tensor, groups: int, weight: torch.Tensor | None) -> bool:
    """Whether the compiled kernels compute this call (else PyTorch does)."""
    return (
        x.dtype == torch.float32
        and x.device.type == "cpu"
        and x.dim() == 4
        and x.numel() >= _MIN_ELEMENTS
        and x.shape[1] % groups == 0
        and weight is not None
        and weight.dtype == torch.float32
        and weight.shape == (x.shape[1],)
        # before the layout queries, which vmap does not answer
        and not _functorch_active()
        and not torch.compiler.is_compiling()
        and not _autocast_cpu()
        and x.is_contiguous(memory_format=torch.channels_last)
        and not x.is_contiguous()
        and library() is not None
    )


def _autocast_cpu() -> bool:
    """Whether autocast is on for the CPU (the one-argument form is torch >= 2.4)."""
    try:
        return bool(torch.is_autocast_enabled("cpu"))
    except TypeError:  # pragma: no cover - torch < 2.4
        return bool(torch.is_autocast_cpu_enabled())


def _functorch_active() -> bool:
    """Whether a ``torch.func`` transform (vmap, grad, jvp) is running: it needs PyTorch's ops."""
    active = getattr(torch._C, "_are_functorch_transforms_active", None)
    return bool(active()) if active is not None else False


def _check(status: int, what: str) -> None:
    if status != 0:
        raise MemoryError(f"GroupNorm {what}: no memory for the kernel's work buffers")


def _forward(
    x: torch.Tensor,
    shift: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor,
    groups: int,
    eps: float,
    silu: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(y, mean, rstd)`` of channels-last ``x`` plus ``shift`` ``(N, C)`` (or nothing),
    SiLU applied to ``y`` when ``silu``; ``mean`` and ``rstd`` are ``(N, groups)``."""
    lib = library()
    assert lib is not None
    n, c, h, w = x.shape
    y = torch.empty_like(x, memory_format=torch.channels_last)
    mean = x.new_empty(n, groups)
    rstd = x.new_empty(n, groups)
    weight, bias = weight.contiguous(), bias.contiguous()
    status = lib.gn_forward(
        x.data_ptr(), _pointer(shift), weight.data_ptr(), bias.data_ptr(), y.data_ptr(),
        mean.data_ptr(), rstd.data_ptr(), n, h * w, c, groups, eps, int(silu),
        torch.get_num_threads(),
    )  # fmt: skip
    _check(status, "forward")
    return y, mean, rstd


def _pointer(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class _GroupNormChannelsLast(torch.autograd.Function):
    """Autograd for the compiled kernels: saves ``x``, the shift and the per-group statistics.
    A backward pass that must itself be differentiable (``create_graph=True``: gradient
    penalties, second derivatives) recomputes the forward with PyTorch's ops and
    differentiates that."""

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        x: torch.Tensor,
        shift: torch.Tensor | None,
        weight: torch.Tensor,
        bias: torch.Tensor,
        groups: int,
        eps: float,
        silu: bool,
    ) -> torch.Tensor:
        y, mean, rstd = _forward(x, shift, weight, bias, groups, eps, silu)
        # a None shift is saved as None (save_for_backward allows it; its stub does not say so)
        ctx.save_for_backward(x, shift, weight, bias, mean, rstd)  # type: ignore[arg-type]
        ctx.groups, ctx.eps, ctx.silu = groups, eps, silu  # type: ignore[attr-defined]
        return y

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, shift, weight, bias, mean, rstd = ctx.saved_tensors
        if torch.is_grad_enabled():
            needed = tuple(ctx.needs_input_grad[:4])
            grads = _differentiable_backward(
                (x, shift, weight, bias), needed, dy, ctx.groups, ctx.eps, ctx.silu
            )
            return (*grads, None, None, None)
        lib = library()
        assert lib is not None
        dy = dy.contiguous(memory_format=torch.channels_last)
        n, c, h, w = x.shape
        dx = torch.empty_like(x, memory_format=torch.channels_last)
        dshift = None if shift is None else shift.new_empty(n, c)
        dweight = weight.new_empty(c)
        dbias = weight.new_empty(c)
        status = lib.gn_backward(
            dy.data_ptr(), x.data_ptr(), _pointer(shift), mean.data_ptr(), rstd.data_ptr(),
            weight.contiguous().data_ptr(), bias.contiguous().data_ptr(), dx.data_ptr(),
            _pointer(dshift), dweight.data_ptr(), dbias.data_ptr(), n, h * w, c, ctx.groups,
            int(ctx.silu), torch.get_num_threads(),
        )  # fmt: skip
        _check(status, "backward")
        return dx, dshift, dweight, dbias, None, None, None


def _reference(
    x: torch.Tensor,
    shift: torch.Tensor | None,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    groups: int,
    eps: float,
    silu: bool,
) -> torch.Tensor:
    """What the kernels compute, in PyTorch's ops."""
    if shift is not None:
        x = x + shift[:, :, None, None]
    y = F.group_norm(x, groups, weight, bias, eps)
    # without autograd the SiLU may overwrite the fresh normalized tensor
    return F.silu(y, inplace=not torch.is_grad_enabled()) if silu else y


def _differentiable_backward(
    inputs: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor],
    needed: tuple[bool, ...],
    dy: torch.Tensor,
    groups: int,
    eps: float,
    silu: bool,
) -> list[torch.Tensor | None]:
    """The gradients at ``inputs = (x, shift, weight, bias)`` along ``dy`` that are
    ``needed``, as a graph of PyTorch's ops (differentiable again)."""
    x, shift, weight, bias = inputs
    y = _reference(x, shift, weight, bias, groups, eps, silu)
    asked = [need and t is not None for t, need in zip(inputs, needed, strict=True)]
    wanted = [t for t, ask in zip(inputs, asked, strict=True) if ask and t is not None]
    grads = iter(torch.autograd.grad(y, wanted, dy, create_graph=True))
    return [next(grads) if ask else None for ask in asked]


def group_norm(
    x: torch.Tensor,
    groups: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    silu: bool = False,
    shift: torch.Tensor | None = None,
) -> torch.Tensor:
    """``F.group_norm(x + shift[:, :, None, None])`` (``shift`` ``(N, C)``, optional), then
    ``F.silu`` when ``silu``; computed by the compiled kernels where they apply (module
    docs)."""
    if not _covered(x, groups, weight) or not _shift_covered(shift, x):
        return _reference(x, shift, weight, bias, groups, eps, silu)
    assert weight is not None
    if bias is None:
        bias = torch.zeros_like(weight)
    inputs = (x, weight, bias) if shift is None else (x, shift, weight, bias)
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        out: torch.Tensor = _GroupNormChannelsLast.apply(x, shift, weight, bias, groups, eps, silu)
        return out
    return _forward(x, shift, weight, bias, groups, eps, silu)[0]


def _shift_covered(shift: torch.Tensor | None, x: torch.Tensor) -> bool:
    """Whether the kernels take this shift: none, or a contiguous float32 ``(N, C)``."""
    return shift is None or (
        shift.dtype == torch.float32
        and shift.device.type == "cpu"
        and shift.shape == x.shape[:2]
        and shift.is_contiguous()
    )


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (the same parameters and state dict) computed by :func:`group_norm`;
    set ``kernels = False`` on a module to compute it with PyTorch's ops alone."""

    kernels: bool = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` -> ``(N, C, H, W)``, normalized over each group of channels."""
        return self._norm(x, None, silu=False)

    def forward_silu(self, x: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
        """``F.silu(self(x + shift[:, :, None, None]))`` (``shift`` ``(N, C)``, optional), in
        one pass where the compiled kernels apply."""
        return self._norm(x, shift, silu=True)

    def _norm(self, x: torch.Tensor, shift: torch.Tensor | None, silu: bool) -> torch.Tensor:
        g, w, b, eps = self.num_groups, self.weight, self.bias, self.eps
        if not self.kernels:
            return _reference(x, shift, w, b, g, eps, silu)
        return group_norm(x, g, w, b, eps, silu=silu, shift=shift)
