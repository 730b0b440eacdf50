"""Run the CPU speed benchmarks and write their tables into docs/benchmarks.md.

``python bench/run_all.py [--quick] [--no-write]``: sampling loops, the U-Net against
diffusers, trainer overhead and the demo run (which trains the full demo once, about three
minutes on 2 cores; ``--quick`` shortens everything).
Each benchmark runs in a fresh process. The tables replace the text between the
``speed-results`` markers of docs/benchmarks.md, each with its machine and date. The GPU
benchmark is separate: ``bench/gpu.sh`` on a machine with a GPU.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DOC = HERE.parent / "docs" / "benchmarks.md"
START, END = "<!-- speed-results:start -->", "<!-- speed-results:end -->"
MODULES = ("speed_sampling", "speed_unet", "speed_trainer", "speed_demo")


def run_module(name: str, quick: bool) -> str:
    """``name.run(quick)`` in a fresh Python process: no benchmark inherits another's heap,
    caches or compiled state."""
    code = f"import {name}; print({name}.run({quick}))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=HERE, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"bench/{name}.py failed:\n{done.stderr}")
    return done.stdout.rstrip("\n") + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, shorter demo")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sections = []
    for name in MODULES:
        start = time.perf_counter()
        text = run_module(name, args.quick)
        print(text, flush=True)
        print(f"({name}: {time.perf_counter() - start:.0f} s)\n", flush=True)
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
