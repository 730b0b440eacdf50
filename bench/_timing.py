"""Shared helpers of the speed benchmarks: side-by-side interleaved timing and machine facts."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable

import torch


def interleaved_samples(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Every repetition's time (s) of each function; the repetitions of all functions interleave
    (A B C A B C ...), so a slow spell of a shared machine hits every contender alike, and
    repetition ``i`` of each is a pair. The time is this process's CPU time
    (``time.process_time``), which other processes competing for the cores do not inflate the
    way they inflate wall time; with one torch thread it is the work done."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.process_time()
            fn()
            times[name].append(time.process_time() - start)
    return times


def interleaved(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1
) -> dict[str, float]:
    """Median time (s) of each function over :func:`interleaved_samples`."""
    times = interleaved_samples(fns, repeats, warmup)
    return {name: statistics.median(values) for name, values in times.items()}


class Ratio:
    """The ratios of paired repetitions: their median and interquartile range."""

    def __init__(self, ratios: list[float]) -> None:
        values = sorted(ratios)
        self.n = len(values)
        self.median = statistics.median(values)
        quartiles = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
        self.low, self.high = quartiles[0], quartiles[2]

    def __str__(self) -> str:
        return f"{self.median:.3f} ({self.low:.3f} - {self.high:.3f})"


def paired_ratio(numerator: list[float], denominator: list[float]) -> Ratio:
    """``numerator[i] / denominator[i]`` over paired repetitions."""
    return Ratio([a / b for a, b in zip(numerator, denominator, strict=True)])


def machine() -> str:
    """CPU model, cores, memory, GPU if any, software versions and today's date (UTC)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            kib = int(f.readline().split()[1])
        memory = f"{kib / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        memory = "unknown memory"
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    try:
        import diffusers

        extra = f", diffusers {diffusers.__version__}"
    except ImportError:
        extra = ""
    threads = torch.get_num_threads()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    return (
        f"{date}; {cpu}, {os.cpu_count()} cores, {memory}, {gpu}; {threads} torch thread(s); "
        f"Python {platform.python_version()}, PyTorch {torch.__version__}{extra}; "
        f"git {_git_head()}"
    )


def _git_head() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
