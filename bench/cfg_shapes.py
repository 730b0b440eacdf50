"""Classifier-free guidance on the shapes data: adherence and diversity against the scale w.

Loads the newest checkpoint of a run of examples/shapes-cfg.toml (train it first with
``ddpmkit run examples/shapes-cfg.toml``), then for w = 0, 1, 3, 7 draws N samples, every
class in turn, with the pipeline's sampler and ``classifier-free`` guidance, and reads them
back with the shapes reader: adherence is the fraction whose shape is the one asked for,
diversity the number of distinct (shape, colour, position) combinations among the readable
ones (5 x 6 x 5 = 150 exist). It also samples the unconditional model (the null condition,
no guidance). Prints a markdown table; writes one grid per scale to docs/images/.

    python bench/cfg_shapes.py [--samples 200]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ddpmkit.app.config import load_config
from ddpmkit.app.evaluate import attribute_adherence, attribute_diversity, attribute_reader
from ddpmkit.app.pipeline import Pipeline, latest_run_directory, load_weights
from ddpmkit.core.checkpoint import list_checkpoints
from ddpmkit.core.images import save_grid

PIPELINE = Path("examples/shapes-cfg.toml")
SCALES = (0.0, 1.0, 3.0, 7.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--images", type=Path, default=Path("docs/images"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = []
    for w in (None, *SCALES):
        scale = 0.0 if w is None else w
        pipeline = Pipeline.build(
            load_config(PIPELINE, [f"sample.guidance.scale={scale}", "device='cpu'"])
        )
        run = latest_run_directory(pipeline.config)
        _, checkpoint = list_checkpoints(run / "checkpoints")[-1]
        model = load_weights(pipeline.model, checkpoint)
        if w is None:  # the unconditional model: the null condition, no guidance
            conditioner = model.conditioner
            assert conditioner is not None and pipeline.sampler is not None
            with torch.no_grad():
                null = conditioner.null(args.samples, torch.device("cpu"))
            samples = pipeline.sampler.sample(
                model,
                (args.samples, *pipeline.sample_shape),
                cond=null,
                generator=torch.Generator().manual_seed(0),
            )
            label = "unconditional (null condition)"
        else:
            samples = pipeline.draw_samples(model, args.samples, seed=0, progress=False)
            label = f"classifier-free, w = {w:g}"
        reader = attribute_reader(pipeline.config.data.type, pipeline.dataset)
        assert reader is not None
        readings = reader.read_attributes(samples)
        found = attribute_diversity(readings)
        if w is not None:
            raw = pipeline.sample_conditions(args.samples)
            wanted = [reader.label_attributes(int(y)) for y in raw]
            found["adherence"] = attribute_adherence(readings, wanted)  # type: ignore[arg-type]
        name = "uncond" if w is None else f"w{w:g}"
        save_grid(samples[:40], args.images / f"cfg-{name}.png", nrow=5, scale=4)
        rows.append((label, found))
        print(label, found, flush=True)
    print(f"\n{args.samples} samples each; adherence: the shape asked for is the shape drawn\n")
    print("| sampling | adherence | readable | distinct combinations | distinct shapes |")
    print("|---|---:|---:|---:|---:|")
    for label, f in rows:
        adherence = f"{f['adherence']:.3f}" if "adherence" in f else "-"
        print(
            f"| {label} | {adherence} | {f['readable_fraction']:.3f} | "
            f"{f['distinct_combinations']:.0f} | {f.get('distinct_shape', 0):.0f} |"
        )


if __name__ == "__main__":
    main()
