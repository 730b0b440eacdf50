"""Training-free inpainting (RePaint) of shapes images with the demo's unconditional network.

Completes the right half of 32 held-out shapes images (seed 1) with the network that
``ddpmkit run examples/shapes.toml`` trains (its newest checkpoint in runs/shapes), with
RePaint's resample U = 1 and U = 3, reads every completion back with the shapes reader and
reports how often its shape, colour and position are the original's. Writes grids (masked
input, completion, original) to docs/images/inpaint-*.png.

    python bench/inpaint_shapes.py
"""

from __future__ import annotations

from pathlib import Path

import torch

import ddpmkit
from ddpmkit import DiffusionModel
from ddpmkit.app.evaluate import attribute_adherence, attribute_reader
from ddpmkit.app.pipeline import load_model_from_checkpoint
from ddpmkit.core.checkpoint import list_checkpoints
from ddpmkit.core.images import save_grid
from ddpmkit_conditioning import region_mask

N = 32
DATA = {"type": "shapes", "image_size": 16, "seed": 1, "num_examples": N}


def held_out(
    run: Path,
) -> tuple[
    DiffusionModel, ddpmkit.AttributeReader, torch.Tensor, list[dict[str, str]], torch.Tensor
]:
    """The newest EMA model of ``run``, the held-out data's attribute reader, its N images,
    their attributes and the mask that keeps the left half known."""
    _, checkpoint = list_checkpoints(run / "checkpoints")[-1]
    model = load_model_from_checkpoint(checkpoint)
    spec = dict(DATA)
    data_type = str(spec.pop("type"))
    data = ddpmkit.create("dataset", data_type, **spec)
    reader = attribute_reader(data_type, data)
    assert reader is not None
    originals = data.batch(list(range(N))).images
    wanted = [w for w in reader.read_attributes(originals) if w is not None]
    assert len(wanted) == N, "the reader reads every original"
    return model, reader, originals, wanted, region_mask("right", 16, 16)


def agreement(reader: ddpmkit.AttributeReader, x: torch.Tensor, wanted: list) -> list[float]:
    """Fractions of ``x`` whose shape, colour, position, and all three, are the original's."""
    readings = reader.read_attributes(x)
    scores = [
        attribute_adherence(readings, [{k: w[k]} for w in wanted])
        for k in ("shape", "color", "position")
    ]
    return [*scores, attribute_adherence(readings, wanted)]


def main() -> None:
    torch.set_num_threads(2)
    model, reader, originals, wanted, known = held_out(Path("runs/shapes"))
    print("| resample U | shape | colour | position | all three |")
    print("|---:|---:|---:|---:|---:|")
    for resample in (1, 3):
        sampler = ddpmkit.create("sampler", "inpaint", data=DATA, resample=resample)
        x = sampler.sample(model, (N, 3, 16, 16), generator=torch.Generator().manual_seed(0))
        scores = agreement(reader, x, wanted)
        print(f"| {resample} | " + " | ".join(f"{s:.3f}" for s in scores) + " |")
        rows = torch.cat([originals * known - (1 - known), x, originals])
        save_grid(
            rows[: 3 * N].reshape(3, N, 3, 16, 16)[:, :8].reshape(-1, 3, 16, 16),
            f"docs/images/inpaint-u{resample}.png",
            nrow=8,
            scale=4,
        )


if __name__ == "__main__":
    main()
