"""What the toy denoisers share: they are unconditional."""

from __future__ import annotations

from ddpmkit import Conditioning


def check_unconditional(cond: Conditioning | None, name: str) -> None:
    """Raise ValueError when ``cond`` carries any field (the toy denoisers take none)."""
    if cond is not None and any(
        v is not None for v in (cond.channels, cond.embedding, cond.context, cond.context_mask)
    ):
        raise ValueError(f"{name} is unconditional and accepts only cond=None")
