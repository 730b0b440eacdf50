"""The demo run of two commits, interleaved: is the new one within 1.10x of the old?

``python bench/compare_commits.py OLD [NEW] [--pairs N] [--steps S]`` checks each commit out
into a temporary git worktree and runs ``python -m ddpmkit run examples/shapes.toml`` from it
(with that tree first on ``PYTHONPATH``, so the installed entry points load its code), old and
new alternating and the order flipped every pair, so a slow spell of a shared machine hits
both alike. Each run's CPU time (user + system of the whole process, every thread) and wall
time are recorded; the result is the median and range of the per-pair ratios new / old.
``NEW`` defaults to the working tree itself. ``--steps`` shortens training (default: the demo's
own 1200 steps).
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import machine, paired_ratio

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def checkout(rev: str | None) -> Iterator[Path]:
    """A worktree of ``rev`` (removed afterwards), or this tree itself for ``None``."""
    if rev is None:
        yield ROOT
        return
    folder = Path(tempfile.mkdtemp(prefix="ddpmkit-bench-"))
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(folder), rev],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    try:
        yield folder
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(folder)], cwd=ROOT)


def run_demo(tree: Path, steps: int | None) -> tuple[float, float]:
    """``(CPU seconds, wall seconds)`` of one demo run from ``tree``."""
    out = tempfile.mkdtemp(prefix="ddpmkit-bench-run-")
    args = ["--quiet", "--set", f"output.dir={out}"]
    if steps is not None:
        args += ["--set", f"train.steps={steps}"]
    env = {"PYTHONPATH": f"{tree}:{tree / 'plugins'}", "PATH": "/usr/bin:/bin"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "ddpmkit", "run", str(tree / "examples" / "shapes.toml"), *args],
        cwd=tree,
        env=env,
        check=True,
        capture_output=True,
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", help="the commit to compare against")
    parser.add_argument("new", nargs="?", help="the new commit (default: this working tree)")
    parser.add_argument("--pairs", type=int, default=3, help="old/new pairs (default 3)")
    parser.add_argument("--steps", type=int, help="training steps (default: the demo's)")
    args = parser.parse_args()
    times: dict[str, list[tuple[float, float]]] = {"old": [], "new": []}
    with checkout(args.old) as old, checkout(args.new) as new:
        trees = {"old": old, "new": new}
        for pair in range(args.pairs):
            order = ["old", "new"] if pair % 2 == 0 else ["new", "old"]
            for name in order:
                times[name].append(run_demo(trees[name], args.steps))
                cpu, wall = times[name][-1]
                print(f"pair {pair + 1} {name}: {cpu:.1f} s CPU, {wall:.1f} s wall", flush=True)
    cpu_ratio = paired_ratio([c for c, _ in times["new"]], [c for c, _ in times["old"]])
    wall_ratio = paired_ratio([w for _, w in times["new"]], [w for _, w in times["old"]])
    print(f"\n{machine()}")
    print(
        f"demo new / old ({args.pairs} pairs): CPU {cpu_ratio}, wall {wall_ratio} (target <= 1.10)"
    )


if __name__ == "__main__":
    main()
