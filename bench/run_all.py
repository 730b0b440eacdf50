"""Run the CPU speed benchmarks and write their tables into docs/benchmarks.md.

``python bench/run_all.py [--quick] [--no-write]``: sampling loops, the U-Net against
diffusers, its GroupNorm kernels against PyTorch's, trainer overhead and the demo run (which
trains the full demo once, about three minutes on 2 cores; ``--quick`` shortens everything).
The tables replace the text between the ``speed-results`` markers of docs/benchmarks.md, each
with its machine and date. The GPU benchmark is separate: ``bench/gpu.sh`` on a machine with
a GPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import speed_demo  # noqa: E402
import speed_group_norm  # noqa: E402
import speed_sampling  # noqa: E402
import speed_trainer  # noqa: E402
import speed_unet  # noqa: E402

DOC = HERE.parent / "docs" / "benchmarks.md"
START, END = "<!-- speed-results:start -->", "<!-- speed-results:end -->"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, shorter demo")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sections = []
    for module in (speed_sampling, speed_unet, speed_group_norm, speed_trainer, speed_demo):
        start = time.perf_counter()
        text = module.run(args.quick)
        print(text, flush=True)
        print(f"({module.__name__}: {time.perf_counter() - start:.0f} s)\n", flush=True)
        sections.append(text)
    if args.no_write:
        return
    doc = DOC.read_text()
    if START not in doc or END not in doc:
        raise SystemExit(f"{DOC}: the {START} ... {END} markers are missing")
    head, rest = doc.split(START, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(head + START + "\n\n" + "\n".join(sections) + "\n" + END + tail)
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
