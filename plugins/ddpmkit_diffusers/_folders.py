"""Finding a model's files in a local diffusers folder (a model folder or a pipeline's)."""

from __future__ import annotations

from pathlib import Path

from ddpmkit import ConfigError


def component_folder(path: str, subfolder: str, config_name: str, what: str) -> Path:
    """``path`` itself when it holds ``config_name``, else ``path/subfolder`` (a pipeline)."""
    root = Path(path).expanduser()
    for candidate in (root, root / subfolder):
        if (candidate / config_name).is_file():
            return candidate
    raise ConfigError(
        f"path: {root} is not a local diffusers {what} folder (no {config_name} in it or in "
        f"{root / subfolder})"
    )
