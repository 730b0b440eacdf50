"""Every example pipeline in examples/ is valid: it builds and cross-checks without running."""

from __future__ import annotations

from pathlib import Path

import pytest

from ddpmkit.app.cli import main

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.toml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_pipeline_validates(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err
