"""Figures written as PNG files (matplotlib, no display needed)."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def save_figure(fig: plt.Figure, path: Path) -> Path:
    """Save ``fig`` as a PNG atomically (temporary file, then rename) and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def plot_vlb_terms(
    per_term: list[float], prior: float, total: float, path: Path, title: str = ""
) -> Path:
    """The per-t breakdown of the bound: L_{t-1} in bits/dim against t, log scale."""
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = range(len(per_term))
    ax.semilogy(steps, [max(v, 1e-12) for v in per_term], lw=1.2, label="L_{t-1} (L_0 at t = 0)")
    ax.axhline(max(prior, 1e-12), color="grey", ls="--", lw=1, label=f"L_T = {prior:.2e}")
    ax.set_xlabel("training index t")
    ax.set_ylabel("bits / dim")
    ax.set_title(title or f"variational bound: {total:.3f} bits/dim")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return save_figure(fig, path)
