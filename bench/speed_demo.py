"""The demo run (examples/shapes.toml): time to the first training step, and peak memory.

Time to first step: from launching a fresh Python process to the end of the first optimizer
step (interpreter start, imports, config, the 20000-image data set, the model, one step), the
median of three launches. Peak memory: the largest resident set size of a whole
``ddpmkit run examples/shapes.toml`` process (training, sampling, writing). The full demo takes
about three minutes on 2 cores; ``--quick`` runs it with 100 training steps instead (memory is
flat after the first steps).

``python bench/speed_demo.py [--quick]``
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import machine

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "examples" / "shapes.toml"

FIRST_STEP = """
import resource, sys, time
from ddpmkit.app.config import load_config
from ddpmkit.app.pipeline import Pipeline
from ddpmkit.app.train import Trainer
config = load_config(sys.argv[1])
pipeline = Pipeline.build(config)
trainer = Trainer(pipeline.model, pipeline.dataset, config.train, progress=False)
trainer.train_step(next(trainer.batches()))
print(time.time(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


RUN_AND_REPORT = """
import resource, sys
from ddpmkit.app.cli import main
code = main(sys.argv[1:])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
sys.exit(code)
"""


def time_to_first_step() -> tuple[float, float]:
    """``(seconds from launch to the end of step 1, peak RSS in MiB of that process)``."""
    start = time.time()
    out = subprocess.run(
        [sys.executable, "-c", FIRST_STEP, str(DEMO)], capture_output=True, text=True, check=True
    )
    done, rss_kib = out.stdout.split()
    return float(done) - start, int(rss_kib) / 1024


def demo_run(steps: int | None) -> tuple[float, float]:
    """``(wall seconds, peak RSS in MiB)`` of ``ddpmkit run examples/shapes.toml``."""
    with tempfile.TemporaryDirectory() as runs:
        command = [sys.executable, "-c", RUN_AND_REPORT, "run", str(DEMO), "--quiet"]
        command += ["--set", f"output.dir={runs!r}"]
        if steps is not None:
            command += ["--set", f"train.steps={steps}"]
        start = time.perf_counter()
        out = subprocess.run(command, check=True, capture_output=True, text=True)
        elapsed = time.perf_counter() - start
    # the demo process's own peak (RUSAGE_CHILDREN would be the largest of all children)
    return elapsed, int(out.stdout.split()[-1]) / 1024


def run(quick: bool = False) -> str:
    """Both measurements as a markdown section."""
    firsts = [time_to_first_step() for _ in range(3)]
    steps = 100 if quick else None
    wall, peak = demo_run(steps)
    what = "the full demo" if steps is None else f"the demo with train.steps = {steps}"
    return "\n".join(
        [
            "### The demo run",
            "",
            f"Machine: {machine()}.",
            "",
            "| measure | value |",
            "|---|---:|",
            "| time to first step (fresh process: imports, data, model, step 1; median of 3) | "
            f"{statistics.median(f[0] for f in firsts):.1f} s |",
            f"| peak memory of that process (RSS) | {max(f[1] for f in firsts):.0f} MiB |",
            f"| peak memory (RSS) of `ddpmkit run`, {what} | {peak:.0f} MiB |",
            f"| wall time of `ddpmkit run`, {what} | {wall:.0f} s |",
            "",
        ]
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 training steps, not 1200")
    print(run(parser.parse_args().quick))
