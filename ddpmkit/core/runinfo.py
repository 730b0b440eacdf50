"""RunInfo: what every hook call is told about the run it belongs to."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs


@attrs.frozen
class RunInfo:
    """The run a hook call belongs to: its folder, resolved config (plain data) and seed."""

    directory: Path
    config: dict[str, Any]
    seed: int
