"""Sample-based distances between point clouds: sliced Wasserstein and MMD.

Both take ``(N, D)`` and ``(M, D)`` tensors (anything of more dimensions is flattened to
``(N, -1)``), compute in float64 on the inputs' device and return a 0-dim float64 tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ddpmkit.core.model import randn


def _points(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both sets as float64 ``(N, D)`` on ``x``'s device; same D, at least one point each."""
    x, y = x.flatten(1).to(torch.float64), y.flatten(1).to(x.device, torch.float64)
    if x.shape[1] != y.shape[1] or x.shape[0] == 0 or y.shape[0] == 0:
        raise ValueError(
            f"expected two non-empty point sets of the same dimension, got {tuple(x.shape)} "
            f"and {tuple(y.shape)}"
        )
    return x, y


def wasserstein_1d(u: torch.Tensor, v: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """W_p^p between the empirical measures of the rows of ``u`` ``(L, N)`` and ``v`` ``(L, M)``,
    ``(L,)``: the integral over q in (0, 1) of |F_u^{-1}(q) - F_v^{-1}(q)|^p (Villani 2009,
    remark 2.19), exact for unequal sizes.

    Both quantile functions are steps; between consecutive breakpoints i/N and j/M they are
    constant, so the integral is a sum over the merged breakpoints (N + M terms).
    """
    n, m = u.shape[-1], v.shape[-1]
    u, v = u.sort(dim=-1).values, v.sort(dim=-1).values
    if n == m:
        # equal sizes: the optimal plan pairs the i-th smallest of each set
        return (u - v).abs().pow(p).mean(dim=-1)
    # the merged breakpoints of both step functions, and the interval each one closes
    levels = torch.cat([torch.arange(1, k + 1, dtype=torch.float64) / k for k in (n, m)])
    right = levels.sort().values.to(u.device)
    left = torch.cat([right.new_zeros(1), right[:-1]])
    # on (left, right] the quantile functions take values u[ceil(q N) - 1] and v[ceil(q M) - 1]
    mid = (left + right) / 2
    i = (mid * n).long().clamp(max=n - 1)
    j = (mid * m).long().clamp(max=m - 1)
    return ((right - left) * (u[..., i] - v[..., j]).abs().pow(p)).sum(dim=-1)


def sliced_wasserstein(
    x: torch.Tensor,
    y: torch.Tensor,
    num_projections: int = 256,
    p: float = 2.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sliced Wasserstein distance SW_p (Bonneel, Rabin, Peyre & Pfister 2015, eq. 2).

    SW_p(x, y)^p = E_theta[W_p^p(theta . x, theta . y)] over directions theta uniform on the
    unit sphere, estimated with ``num_projections`` random directions drawn from
    ``generator``. Each 1D W_p is exact (sorted projections; quantile functions when the
    sizes differ). Symmetric, 0 for identical sets; a shift by c gives (E|c . theta|^p)^(1/p).
    """
    if num_projections < 1 or p < 1:
        raise ValueError(f"need num_projections >= 1 and p >= 1, got {num_projections}, {p}")
    x, y = _points(x, y)
    # theta ~ uniform on S^{D-1}: normalised standard normal vectors, (L, D)
    theta = randn((num_projections, x.shape[1]), generator=generator, dtype=torch.float64)
    theta = (theta / theta.norm(dim=1, keepdim=True)).to(x.device)
    # W_p^p of every 1D projection theta . x, averaged over directions
    return wasserstein_1d(theta @ x.T, theta @ y.T, p).mean() ** (1.0 / p)


def mmd(
    x: torch.Tensor,
    y: torch.Tensor,
    bandwidths: Sequence[float] = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0),
) -> torch.Tensor:
    """Unbiased estimate MMD_u^2 of the squared maximum mean discrepancy (Gretton et al. 2012,
    JMLR, eq. 3 / lemma 6) with the kernel k(a, b) = sum_h exp(-|a - b|^2 / (2 h^2)).

    MMD_u^2 = mean_{i != j} k(x_i, x_j) + mean_{i != j} k(y_i, y_j) - 2 mean_{i, j} k(x_i, y_j);
    its expectation is 0 when x and y come from one distribution, so an estimate may be
    slightly negative. The sum of RBF kernels over ``bandwidths`` (in data units) is
    characteristic and sensitive at several scales. Needs at least 2 points per set; memory
    grows as (N + M)^2.
    """
    x, y = _points(x, y)
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2 or not bandwidths or min(bandwidths) <= 0:
        raise ValueError("mmd needs >= 2 points per set and positive bandwidths")
    h2 = 2.0 * torch.tensor(list(bandwidths), dtype=torch.float64, device=x.device) ** 2

    def kernel_sum(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        d2 = torch.cdist(a, b).pow(2)
        return sum((torch.exp(-d2 / h).sum() for h in h2), x.new_zeros(()))

    # the diagonal terms k(x_i, x_i) = len(bandwidths) are left out of the within-set means
    diag = float(len(bandwidths))
    k_xx = (kernel_sum(x, x) - n * diag) / (n * (n - 1))
    k_yy = (kernel_sum(y, y) - m * diag) / (m * (m - 1))
    k_xy = kernel_sum(x, y) / (n * m)
    return k_xx + k_yy - 2.0 * k_xy
