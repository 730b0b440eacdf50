"""``ddpmkit new-plugin NAME``: write a working plugin distribution ``ddpmkit-NAME``.

The package registers one schedule named NAME (log-SNR falling linearly in t, a small real
schedule to edit or replace) and a test module written with the conformance kit, so
``pip install -e ddpmkit-NAME && pytest ddpmkit-NAME`` passes from the first minute.
"""

from __future__ import annotations

import re
from pathlib import Path

from ddpmkit import __version__
from ddpmkit.core.errors import DdpmkitError
from ddpmkit.core.plugin_policy import PLUGIN_API_VERSION

_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")

PYPROJECT = """\
[build-system]
requires = ["setuptools>=69"]
build-backend = "setuptools.build_meta"

[project]
name = "ddpmkit-{name}"
version = "0.1.0"
description = "The {name} noise schedule for ddpmkit"
requires-python = ">=3.10"
dependencies = ["ddpmkit>={ddpmkit_version}"]

[project.optional-dependencies]
test = ["pytest>=7.4"]

[project.entry-points."ddpmkit.schedules"]
{name} = "{package}:{cls}"

[tool.setuptools.packages.find]
where = ["src"]

[tool.pytest.ini_options]
testpaths = ["tests"]
"""

MODULE = '''\
"""The ``{name}`` noise schedule, a ddpmkit plugin."""

from __future__ import annotations

import torch
from pydantic import Field, model_validator

import ddpmkit

DDPMKIT_PLUGIN_API = "{api}"
"""The ddpmkit plugin API this plugin is written for (a different major is refused)."""

__all__ = ["{cls}", "{cls}Params"]


class {cls}Params(ddpmkit.Params):
    """Parameters of the ``{name}`` schedule."""

    timesteps: int = Field(1000, ge=1, description="Number of training steps T.")
    logsnr_max: float = Field(10.0, description="log-SNR at the first step.")
    logsnr_min: float = Field(-10.0, description="log-SNR at the last step.")

    @model_validator(mode="after")
    def _check_range(self) -> {cls}Params:
        if self.logsnr_min >= self.logsnr_max:
            raise ValueError("logsnr_min must be smaller than logsnr_max")
        return self


class {cls}(ddpmkit.NoiseSchedule):
    """log SNR(t) falls linearly from ``logsnr_max`` to ``logsnr_min``; abar = sigmoid(log SNR)
    (abar = SNR / (1 + SNR), Kingma et al. 2021)."""

    Params = {cls}Params
    params: {cls}Params

    def make_alphas_cumprod(self) -> torch.Tensor:
        """abar_t for the training indices 0 .. T-1."""
        p = self.params
        logsnr = torch.linspace(p.logsnr_max, p.logsnr_min, p.timesteps, dtype=torch.float64)
        return torch.sigmoid(logsnr)
'''

TEST = '''\
"""Tests of the ``{name}`` schedule: the ddpmkit conformance kit, then its own maths."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

import ddpmkit
from ddpmkit.testing import ScheduleContract


class Test{cls}(ScheduleContract):
    name = "{name}"
    params: ClassVar[dict[str, Any]] = {{"timesteps": 100}}


def test_log_snr_falls_linearly() -> None:
    schedule = ddpmkit.create("schedule", "{name}", timesteps=11, logsnr_max=5, logsnr_min=-5)
    expected = torch.linspace(5, -5, 11, dtype=torch.float64)
    torch.testing.assert_close(schedule.log_snr, expected)
'''

README = """\
# ddpmkit-{name}

A ddpmkit plugin registering the schedule `{name}`. Install it and check it:

```bash
pip install -e ".[test]"
ddpmkit plugins
pytest
```

Then name it in a pipeline: `[schedule]` `type = "{name}"`.
"""


def write_plugin(name: str, parent: Path) -> Path:
    """Write ``parent/ddpmkit-NAME`` and return it; refuses a bad name or an existing folder."""
    if not _NAME.match(name):
        raise DdpmkitError(
            f"new-plugin: {name!r} is not a plugin name: use lowercase letters, digits and "
            "single dashes, starting with a letter (e.g. 'my-schedule')"
        )
    folder = parent / f"ddpmkit-{name}"
    if folder.exists():
        raise DdpmkitError(f"new-plugin: {folder} already exists; choose another name or folder")
    package = "ddpmkit_" + name.replace("-", "_")
    cls = "".join(part.capitalize() for part in name.split("-")) + "Schedule"
    fields = dict(
        name=name, package=package, cls=cls, api=PLUGIN_API_VERSION, ddpmkit_version=__version__
    )
    files = {
        folder / "pyproject.toml": PYPROJECT,
        folder / "README.md": README,
        folder / "src" / package / "__init__.py": MODULE,
        folder / "src" / package / "py.typed": "",
        folder / "tests" / f"test_{package}.py": TEST,
    }
    for path, template in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(**fields), encoding="utf-8")
    return folder
