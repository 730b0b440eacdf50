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
    """The per-t breakdown of the bound: the KL terms L_{t-1} (t >= 1) in bits/dim against t
    on a log scale; the decoder term L_0 (which may be negative for continuous data) and the
    prior L_T are given in the legend."""
    fig, ax = plt.subplots(figsize=(7, 4))
    kl = per_term[1:]
    ax.semilogy(range(1, len(per_term)), [max(v, 1e-12) for v in kl], lw=1.2, label="L_{t-1}")
    ax.plot([], [], " ", label=f"L_0 = {per_term[0]:.4f}")
    ax.plot([], [], " ", label=f"L_T = {prior:.2e}")
    positive = [v for v in kl if v > 0]
    if positive:
        ax.set_ylim(min(positive) / 2, max(positive) * 2)
    ax.set_xlabel("training index t")
    ax.set_ylabel("bits / dim")
    ax.set_title(title or f"variational bound: {total:.4f} bits/dim")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return save_figure(fig, path)
