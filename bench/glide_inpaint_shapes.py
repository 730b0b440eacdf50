"""Mask-conditioned (GLIDE-style) inpainting of shapes images, on the images the RePaint
benchmark (bench/inpaint_shapes.py) completes.

Completes the right half of the 32 held-out shapes images (seed 1) with the network that
``ddpmkit run examples/shapes-glide-inpaint.toml`` trains (its newest checkpoint in
runs/shapes-glide-inpaint), with DDIM (50 steps, eta = 1, as the example samples), three
sampling seeds; reads every completion back with the
shapes reader and reports how often its shape, colour and position are the original's, for
the network's output as it is and with the known half pasted back (as RePaint's output
has it). Writes a grid (original, masked input, completions of two seeds) to
docs/images/glide-inpaint.png.

    python bench/glide_inpaint_shapes.py
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from inpaint_shapes import N, agreement, held_out

import ddpmkit
from ddpmkit.core.images import save_grid
from ddpmkit_datasets._render import BACKGROUND

SEEDS = (0, 1, 2)


def main() -> None:
    torch.set_num_threads(2)
    model, data, originals, wanted, known = held_out(Path("runs/shapes-glide-inpaint"))
    raw = torch.cat([originals, known.expand(N, 1, 16, 16)], dim=1)
    with torch.no_grad():
        cond = model.encode(raw)
    samplers = {
        "DDIM, 50 steps": ddpmkit.create("sampler", "ddim", steps=50, eta=1.0, clip_x0=True),
    }
    # the images whose known half shows part of the shape: only those can be completed as
    # the original (a shape wholly in the right half leaves nothing to go on)
    background = torch.tensor(BACKGROUND, dtype=torch.float32)[:, None, None] / 127.5 - 1
    visible = ((originals - background).abs().amax(1) * known[:, 0] > 0.25).flatten(1).any(1)
    print(f"known half shows part of the shape: {int(visible.sum())} of {N}")
    print("| sampler | output | shape | colour | position | all three |")
    print("|---|---|---:|---:|---:|---:|")
    grid_rows = [originals[:8], (originals * known - (1 - known))[:8]]
    for name, sampler in samplers.items():
        raw_scores, pasted_scores = [], []
        start = time.perf_counter()
        for seed in SEEDS:
            generator = torch.Generator().manual_seed(seed)
            x = sampler.sample(model, (N, 3, 16, 16), cond=cond, generator=generator)
            pasted = known * originals + (1 - known) * x
            raw_scores.append(agreement(data, x, wanted))
            pasted_scores.append(agreement(data, pasted, wanted))
            seen = [i for i in range(N) if visible[i]]
            part = agreement(data, x[seen], [wanted[i] for i in seen])[3]
            print(f"seed {seed}: all three, among the {len(seen)} with a visible part: {part:.3f}")
            if name.startswith("DDIM") and seed < 2:
                grid_rows.append(x[:8])
        elapsed = time.perf_counter() - start
        for label, scores in (("as sampled", raw_scores), ("known half pasted", pasted_scores)):
            mean = torch.tensor(scores).mean(0).tolist()
            cells = " | ".join(f"{s:.3f}" for s in mean)
            per_seed = ", ".join(f"{s[3]:.3f}" for s in scores)
            print(f"| {name} | {label} | {cells} |  (all three per seed: {per_seed})")
        print(f"{name}: {elapsed:.0f} s for {len(SEEDS)} x {N} completions")
    save_grid(torch.cat(grid_rows), "docs/images/glide-inpaint.png", nrow=8, scale=4)


if __name__ == "__main__":
    main()
