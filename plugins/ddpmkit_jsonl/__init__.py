"""A hook plugin that appends every training metric and run event to ``metrics.jsonl``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ddpmkit import RunInfo, hookimpl

DDPMKIT_PLUGIN_API = "2.0"
"""The ddpmkit plugin API this plugin is written for."""

FILENAME = "metrics.jsonl"


def _append(run: RunInfo, record: dict[str, Any]) -> None:
    record = {"time": time.time(), **record}
    with open(run.directory / FILENAME, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


@hookimpl
def ddpmkit_run_start(run: RunInfo) -> None:
    """Record the start of a run."""
    _append(run, {"event": "run_start", "seed": run.seed})


@hookimpl
def ddpmkit_train_metrics(run: RunInfo, step: int, metrics: dict[str, Any]) -> None:
    """One line per metrics report."""
    _append(run, {"event": "train", "step": step, **metrics})


@hookimpl
def ddpmkit_checkpoint_saved(run: RunInfo, step: int, path: Path) -> None:
    """Record a checkpoint."""
    _append(run, {"event": "checkpoint", "step": step, "path": str(path)})


@hookimpl
def ddpmkit_samples_written(run: RunInfo, path: Path, count: int) -> None:
    """Record a sample grid."""
    _append(run, {"event": "samples", "path": str(path), "count": count})


@hookimpl
def ddpmkit_run_end(run: RunInfo, status: str) -> None:
    """Record the end of a run."""
    _append(run, {"event": "run_end", "status": status})
