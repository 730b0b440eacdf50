"""CLIP guidance on the shapes data: adherence to text prompts and diversity against the scale s.

Loads a finished run of examples/shapes-clip.toml (``ddpmkit run examples/shapes-clip.toml``
first): its unconditional U-Net (EMA weights of the newest checkpoint) and the noised CLIP its
``train-clip`` stage trained. For each scale s it draws N samples with the file's sampler and
``clip`` guidance, the file's five prompts in turn, and reads them back with the shapes
reader. Adherence: the fraction whose shape, colour and position are all the prompt's (and
each attribute alone); diversity: distinct (shape, colour, position) combinations among the
readable samples, and the mean pixel distance between two samples of the same prompt.
Prints a markdown table; writes one grid per scale (a column per prompt) to docs/images/.

    python bench/clip_shapes.py [--run runs/shapes-clip] [--samples 200] [--scales 0 10 30]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ddpmkit.app.config import load_config
from ddpmkit.app.evaluate import attribute_adherence_by_key, attribute_diversity, attribute_reader
from ddpmkit.app.pipeline import Pipeline, latest_run_directory, load_weights
from ddpmkit.core.checkpoint import list_checkpoints
from ddpmkit.core.images import save_grid

PIPELINE = Path("examples/shapes-clip.toml")


def within_prompt_distance(samples: torch.Tensor, prompts: list[str]) -> float:
    """The mean RMS pixel distance between two samples drawn for the same prompt."""
    distances = []
    for prompt in sorted(set(prompts)):
        group = samples[[i for i, p in enumerate(prompts) if p == prompt]].flatten(1)
        d = torch.cdist(group, group) / group.shape[1] ** 0.5
        n = group.shape[0]
        distances.append(float(d.sum() / (n * (n - 1))))
    return sum(distances) / len(distances)


def read_prompted(pipeline: Pipeline, run: Path, count: int, grid: Path) -> dict[str, float | int]:
    """Draw ``count`` samples from the run's newest EMA weights with the pipeline's prompts,
    read them back against the prompts and write a grid of the first 40 to ``grid``."""
    _, checkpoint = list_checkpoints(run / "checkpoints")[-1]
    model = load_weights(pipeline.model, checkpoint)
    samples = pipeline.draw_samples(model, count, seed=0, progress=False)
    reader = attribute_reader(pipeline.config.data.type, pipeline.dataset)
    assert reader is not None
    readings = reader.read_attributes(samples)
    prompts = pipeline.sample_conditions(count)
    wanted = [reader.caption_attributes(p) for p in prompts]
    save_grid(samples[:40], grid, nrow=5, scale=4)
    return {
        **attribute_diversity(readings),
        **attribute_adherence_by_key(readings, wanted),
        "within_prompt_distance": within_prompt_distance(samples, prompts),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None, help="default: the latest run")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--scales", type=float, nargs="+", default=[0.0, 10.0, 30.0, 100.0])
    parser.add_argument("--images", type=Path, default=Path("docs/images"))
    args = parser.parse_args()
    rows = []
    for s in args.scales:
        pipeline = Pipeline.build(
            load_config(PIPELINE, [f"sample.guidance.scale={s}", "device='cpu'"])
        )
        run = args.run or latest_run_directory(pipeline.config)
        pipeline.attach_stages(run)
        found = read_prompted(pipeline, run, args.samples, args.images / f"clip-s{s:g}.png")
        rows.append((s, found))
        print(f"s = {s:g}", json.dumps(found), flush=True)
    print(f"\n{args.samples} samples per scale, the 5 prompts in turn\n")
    print(
        "| scale s | adherence (all three) | shape | colour | position | readable "
        "| distinct combinations | within-prompt distance |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s, f in rows:
        print(
            f"| {s:g} | {f['adherence']:.3f} | {f['adherence_shape']:.3f} | "
            f"{f['adherence_color']:.3f} | {f['adherence_position']:.3f} | "
            f"{f['readable_fraction']:.3f} | {f['distinct_combinations']:.0f} | "
            f"{f['within_prompt_distance']:.3f} |"
        )


if __name__ == "__main__":
    main()
