"""Classifier guidance on the shapes data: adherence and diversity against the scale s.

Loads a finished run of examples/shapes-classifier.toml (``ddpmkit run`` it first): the newest
checkpoint of its unconditional U-Net and the classifier its ``train-classifier`` stage saved.
For each s it draws the samples ``ddpmkit eval --set sample.guidance.scale=s`` reads (the same
seed, the same labels: every shape in turn), reads them back with the shapes reader and writes
the first 40 as a grid (one column per shape) to docs/images/classifier-s<s>.png. Adherence is
the fraction whose shape is the one asked for; diversity the number of distinct (shape, colour,
position) combinations among the readable ones (5 x 6 x 5 = 150 exist). Prints a markdown table.

    python bench/classifier_shapes.py [--samples 200] [--scales 0 1 3 10] [--run DIR]
    python bench/classifier_shapes.py --scales 3 --form mean-shift \\
        --set 'sample.sampler={type="ddpm", clip_x0=true}'
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ddpmkit.app.config import load_config
from ddpmkit.app.evaluate import attribute_adherence, attribute_diversity, attribute_reader
from ddpmkit.app.pipeline import Pipeline, latest_run_directory, load_weights
from ddpmkit.core.checkpoint import list_checkpoints
from ddpmkit.core.images import save_grid

PIPELINE = Path("examples/shapes-classifier.toml")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--scales", type=float, nargs="+", default=[0.0, 1.0, 3.0, 10.0])
    parser.add_argument("--form", choices=["score", "mean-shift"], default="score")
    parser.add_argument("--images", type=Path, default=Path("docs/images"))
    parser.add_argument("--run", type=Path, help="the run folder (default: the latest)")
    parser.add_argument(
        "--set", action="append", default=[], help="another override, e.g. of the sampler"
    )
    args = parser.parse_args()
    rows = []
    for s in args.scales:
        overrides = [f"sample.guidance.scale={s}", f"sample.guidance.form='{args.form}'", *args.set]
        pipeline = Pipeline.build(load_config(PIPELINE, [*overrides, "device='cpu'"]))
        run = args.run or latest_run_directory(pipeline.config)
        pipeline.attach_stages(run)
        _, checkpoint = list_checkpoints(run / "checkpoints")[-1]
        model = load_weights(pipeline.model, checkpoint)
        samples = pipeline.draw_samples(
            model, args.samples, seed=pipeline.config.seed, progress=False
        )
        reader = attribute_reader(pipeline.config.data.type, pipeline.dataset)
        assert reader is not None
        readings = reader.read_attributes(samples)
        found = attribute_diversity(readings)
        wanted = [reader.label_attributes(int(y)) for y in pipeline.sample_conditions(args.samples)]
        found["adherence"] = attribute_adherence(readings, wanted)
        suffix = "" if args.form == "score" else "-mean-shift"
        save_grid(samples[:40], args.images / f"classifier-s{s:g}{suffix}.png", nrow=5, scale=4)
        rows.append((s, found))
        print(f"s = {s:g}", found, flush=True)
    print(f"\n{args.samples} samples each ({args.form} form)\n")
    print("| scale s | adherence | readable | distinct combinations | distinct colours |")
    print("|---|---:|---:|---:|---:|")
    for s, f in rows:
        print(
            f"| {s:g} | {f['adherence']:.3f} | {f['readable_fraction']:.3f} | "
            f"{f['distinct_combinations']:.0f} | {f.get('distinct_color', 0):.0f} |"
        )


if __name__ == "__main__":
    main()
