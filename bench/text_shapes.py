"""Text-conditional shapes: adherence to the prompts under classifier-free guidance, alone and
composed with CLIP guidance.

Loads a finished run of examples/shapes-text.toml (its EMA weights) and, for the CLIP rows, the
noised CLIP of a finished run of examples/shapes-clip.toml (its ``stages/clip``). Draws N
samples per setting, the file's five prompts in turn, and reads them back as
bench/clip_shapes.py does. Settings: classifier-free w = 0 and 3, then w = 3 with CLIP
guidance s = 3 on top (``[[sample.guidance]]``: classifier-free innermost). Prints a markdown
table; writes one grid per setting to docs/images/.

    python bench/text_shapes.py [--samples 200]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from clip_shapes import read_prompted

from ddpmkit.app.config import load_config
from ddpmkit.app.pipeline import Pipeline, latest_run_directory

PIPELINE = Path("examples/shapes-text.toml")
CLIP_PIPELINE = Path("examples/shapes-clip.toml")
SETTINGS = (
    ("classifier-free w = 0", "w0", ["sample.guidance.scale=0.0"]),
    ("classifier-free w = 3", "w3", ["sample.guidance.scale=3.0"]),
    (
        "classifier-free w = 3, then CLIP s = 3",
        "w3-clip3",
        [
            'sample.guidance=[{type = "classifier-free", scale = 3.0}, '
            '{type = "clip", clip = "clip", scale = 3.0}]',
            'stages.clip={type = "train-clip"}',
        ],
    ),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--images", type=Path, default=Path("docs/images"))
    args = parser.parse_args()
    clip_run = latest_run_directory(load_config(CLIP_PIPELINE))
    rows = []
    for label, name, overrides in SETTINGS:
        pipeline = Pipeline.build(load_config(PIPELINE, [*overrides, "device='cpu'"]))
        run = latest_run_directory(pipeline.config)
        for guidance in pipeline.guidances:  # the CLIP of the shapes-clip run
            guidance.attach({"clip": clip_run / "stages" / "clip"})
        found = read_prompted(pipeline, run, args.samples, args.images / f"text-{name}.png")
        rows.append((label, found))
        print(label, json.dumps(found), flush=True)
    print(f"\n{args.samples} samples per setting, the 5 prompts in turn\n")
    print(
        "| sampling | adherence (all three) | shape | colour | position | readable "
        "| distinct combinations | within-prompt distance |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, f in rows:
        print(
            f"| {label} | {f['adherence']:.3f} | {f['adherence_shape']:.3f} | "
            f"{f['adherence_color']:.3f} | {f['adherence_position']:.3f} | "
            f"{f['readable_fraction']:.3f} | {f['distinct_combinations']:.0f} | "
            f"{f['within_prompt_distance']:.3f} |"
        )


if __name__ == "__main__":
    main()
