"""A hook plugin that writes training metrics and sample grids to TensorBoard event files in
``<run folder>/tensorboard`` (``tensorboard --logdir runs`` shows every run).

Needs the optional dependency: ``pip install "ddpmkit[tensorboard]"``; without it the plugin
is listed as failed by ``ddpmkit plugins`` and runs go on without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

try:
    from torch.utils.tensorboard import SummaryWriter
except ImportError as exc:  # torch's writer imports the tensorboard package
    raise ImportError(
        "the tensorboard hook needs the tensorboard package: pip install 'ddpmkit[tensorboard]'"
    ) from exc

import numpy as np
from PIL import Image

from ddpmkit import RunInfo, hookimpl

DDPMKIT_PLUGIN_API = "2.0"
"""The ddpmkit plugin API this plugin is written for."""

SUBFOLDER = "tensorboard"

_writers: dict[Path, SummaryWriter] = {}


def _writer(run: RunInfo) -> SummaryWriter:
    """The open writer of ``run`` (one per run folder; created on first use)."""
    if run.directory not in _writers:
        _writers[run.directory] = SummaryWriter(log_dir=str(run.directory / SUBFOLDER))
    return _writers[run.directory]


@hookimpl
def ddpmkit_run_start(run: RunInfo) -> None:
    """Open the run's event file and record its seed."""
    _writer(run).add_text("run/seed", str(run.seed), global_step=0)


@hookimpl
def ddpmkit_train_metrics(run: RunInfo, step: int, metrics: dict[str, Any]) -> None:
    """Every numeric metric as a scalar ``train/<name>`` at ``step``."""
    writer = _writer(run)
    for key, value in metrics.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            writer.add_scalar(f"train/{key}", value, global_step=step)


@hookimpl
def ddpmkit_samples_written(run: RunInfo, path: Path, count: int) -> None:
    """The sample grid (or scatter plot) PNG as the image ``samples``."""
    if path.suffix.lower() == ".png" and path.is_file():
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
        _writer(run).add_image("samples", pixels, global_step=0, dataformats="HWC")


@hookimpl
def ddpmkit_run_end(run: RunInfo, status: str) -> None:
    """Record the status, flush and close the event file."""
    writer = _writers.pop(run.directory, None)
    if writer is not None:
        writer.add_text("run/status", status, global_step=0)
        writer.close()
