"""The shapes cascade (8x8 -> 16x16) against the sampling level of its noise conditioning
augmentation.

Loads the super-resolution model that ``ddpmkit run examples/shapes-cascade.toml`` trains
(its newest checkpoint in runs/shapes-cascade) and the base stage's 32 samples, and samples
the super-resolution model at several augmentation levels a (s = round(a (T - 1))) on two sets
of low-resolution inputs: the base model's samples (the cascade), and 32 held-out shapes
images averaged down to 8x8 (seed 1, where the 16x16 originals are known). For each it
reports how far the output, averaged back down to 8x8, is from its input (RMSE in [-1, 1]
units), and how often the shapes reader reads the same shape, colour and position in the
16x16 output as in the 8x8 input (for the held-out set also: as in the 16x16 original).
Writes docs/images/cascade.png (base samples, enlarged, above the outputs at three levels) and
docs/images/cascade-heldout.png (original, its 8x8 input, outputs).

    python bench/cascade_shapes.py
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

import ddpmkit
from ddpmkit.app.evaluate import attribute_adherence, attribute_reader
from ddpmkit.app.pipeline import load_model_from_checkpoint
from ddpmkit.core.checkpoint import list_checkpoints
from ddpmkit.core.images import save_grid
from ddpmkit_conditioning.cascade import load_stage_samples
from ddpmkit_conditioning.image import resize

RUN = Path("runs/shapes-cascade")
N = 32
LEVELS = (0.0, 0.1, 0.25, 0.5)
GRID_LEVELS = (0.0, 0.1, 0.5)


def agreement(reader: ddpmkit.AttributeReader, x: torch.Tensor, reference: torch.Tensor) -> str:
    """Fractions of ``x`` read as the same shape, colour, position, and all three, as
    ``reference``, over the references the reader can read, as table cells."""
    wanted, found = reader.read_attributes(reference), reader.read_attributes(x)
    pairs = [(f, w) for f, w in zip(found, wanted, strict=True) if w is not None]
    readings, asked = [f for f, _ in pairs], [w for _, w in pairs]
    scores = [
        attribute_adherence(readings, [{k: w[k]} for w in asked])  # type: ignore[index]
        for k in ("shape", "color", "position")
    ]
    scores.append(attribute_adherence(readings, asked))  # type: ignore[arg-type]
    return " | ".join(f"{s:.3f}" for s in scores)


def main() -> None:
    torch.set_num_threads(2)
    _, checkpoint = list_checkpoints(RUN / "checkpoints")[-1]
    model = load_model_from_checkpoint(checkpoint)
    conditioner = model.conditioner
    assert conditioner is not None
    data = ddpmkit.create("dataset", "shapes", image_size=16, seed=1, num_examples=N)
    reader = attribute_reader("shapes", data)
    assert reader is not None
    originals = data.batch(list(range(N))).images
    inputs = {
        "base samples": load_stage_samples(RUN / "stages" / "base")[:N],
        "held-out, averaged down": resize(originals, 8),
    }
    sampler = ddpmkit.create("sampler", "ddim", steps=50, eta=1.0, clip_x0=True)
    print("| input | level a | s | RMSE to input | same as the input: shape | colour | position")
    print("| all three | all three as the original |")
    outputs: dict[tuple[str, float], torch.Tensor] = {}
    start = time.perf_counter()
    for name, low in inputs.items():
        readable = reader.read_attributes(low)
        for level in LEVELS:
            conditioner.params = conditioner.params.model_copy(update={"level": level})
            with torch.no_grad():
                cond = model.encode(low)
            generator = torch.Generator().manual_seed(0)
            x = sampler.sample(model, (len(low), 3, 16, 16), cond=cond, generator=generator)
            outputs[(name, level)] = x
            rmse = float((resize(x, 8) - low).pow(2).mean().sqrt())
            same = agreement(reader, x, low)
            original = agreement(reader, x, originals)[-5:] if name.startswith("held") else "-"
            s = round(level * (model.T - 1))
            print(f"| {name} | {level} | {s} | {rmse:.4f} | {same} | {original} |")
        count = sum(r is not None for r in readable)
        print(f"({name}: the reader reads {count} of {len(low)} inputs)")
    print(f"sampling: {time.perf_counter() - start:.0f} s")
    base = inputs["base samples"]
    rows = [resize(base[:8], 16, "nearest")]
    rows += [outputs[("base samples", a)][:8] for a in GRID_LEVELS]
    save_grid(torch.cat(rows), "docs/images/cascade.png", nrow=8, scale=4)
    low = inputs["held-out, averaged down"]
    rows = [originals[:8], resize(low[:8], 16, "nearest")]
    rows += [outputs[("held-out, averaged down", a)][:8] for a in GRID_LEVELS]
    save_grid(torch.cat(rows), "docs/images/cascade-heldout.png", nrow=8, scale=4)


if __name__ == "__main__":
    main()
