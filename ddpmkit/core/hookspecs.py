"""Hook specifications: the cross-cutting events a ``ddpmkit.plugins`` hook plugin can observe.

A hook plugin is a module or object with functions decorated by :data:`ddpmkit.hookimpl` and
named like the specs below; it is registered through the ``ddpmkit.plugins`` entry-point group.
Every hook receives the :class:`~ddpmkit.RunInfo` of the run it belongs to.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from ddpmkit.core.runinfo import RunInfo

PROJECT = "ddpmkit"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def ddpmkit_run_start(run: RunInfo) -> None:
    """A run begins; ``run.directory`` exists and holds the resolved config."""


@hookspec
def ddpmkit_run_end(run: RunInfo, status: str) -> None:
    """A run ends; ``status`` is ``"completed"``, ``"interrupted"`` or ``"failed"``."""


@hookspec
def ddpmkit_train_metrics(run: RunInfo, step: int, metrics: dict[str, Any]) -> None:
    """Training metrics at ``step`` (loss, learning rate, it/s...), every ``train.log_every``."""


@hookspec
def ddpmkit_checkpoint_saved(run: RunInfo, step: int, path: Path) -> None:
    """A checkpoint for ``step`` was written completely to ``path``."""


@hookspec
def ddpmkit_samples_written(run: RunInfo, path: Path, count: int) -> None:
    """``count`` samples were written to ``path`` (a PNG grid of images, or a scatter plot of
    vector data)."""
