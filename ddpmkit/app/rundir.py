"""A pipeline's run folder: a fresh one per run (or the latest, for ``--resume``), and the
files that record what produced it (the resolved config, the versions)."""

from __future__ import annotations

import json
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from ddpmkit.app.config import PipelineConfig
from ddpmkit.core import registry
from ddpmkit.core.errors import ConfigError, DdpmkitError


def new_run_directory(config: PipelineConfig, *, overwrite: bool = False) -> Path:
    """``output.dir/output.name``, or ``name-2``, ``name-3``... so no run is overwritten.

    With ``overwrite`` (asked for by ``ddpmkit run --overwrite``) an existing run folder of that
    name is deleted and reused; a folder that is not a run folder (no ``config.json``) never is.
    """
    parent = Path(config.output.dir)
    name = config.output.name or "run"
    candidate, n = parent / name, 1
    if overwrite and candidate.exists():
        if not (candidate / "config.json").is_file():
            raise ConfigError(
                f"--overwrite: {candidate} is not a ddpmkit run folder (it has no config.json); "
                "refusing to delete it"
            )
        shutil.rmtree(candidate)
    while candidate.exists():
        n += 1
        candidate = parent / f"{name}-{n}"
    try:
        candidate.mkdir(parents=True)
    except OSError as exc:
        raise ConfigError(f"output.dir: cannot create {candidate}: {exc.strerror}") from exc
    return candidate


def latest_run_directory(config: PipelineConfig) -> Path:
    """The most recent run folder of this pipeline's name (for ``--resume``)."""
    parent = Path(config.output.dir)
    name = config.output.name or "run"
    numbers = {}
    for path in parent.glob(f"{name}*"):
        suffix = path.name[len(name) :]
        if path.is_dir() and suffix == "":
            numbers[1] = path
        elif path.is_dir() and suffix.startswith("-") and suffix[1:].isdigit():
            numbers[int(suffix[1:])] = path
    if not numbers:
        raise DdpmkitError(f"no run folder named {name!r} under {parent}")
    return numbers[max(numbers)]


def write_run_files(directory: Path, resolved: dict[str, Any]) -> None:
    """The resolved config and the versions of everything that produced the run."""
    (directory / "config.json").write_text(json.dumps(resolved, indent=2) + "\n")
    versions = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "argv": sys.argv,
        "plugins": plugin_versions(),
    }
    (directory / "versions.json").write_text(json.dumps(versions, indent=2) + "\n")


def plugin_versions() -> dict[str, str]:
    """``distribution -> version`` of every distribution that registers a component."""
    found: dict[str, str] = {}
    for kind in registry.KIND_GROUPS:
        for rec in registry.records(kind):
            found[rec.distribution] = rec.version
    return dict(sorted(found.items()))
