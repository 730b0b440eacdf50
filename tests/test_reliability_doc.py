"""docs/reliability.md stays true: every test its table names exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_test_named_in_the_reliability_table_exists() -> None:
    text = (ROOT / "docs" / "reliability.md").read_text()
    named = re.findall(r"`(test_\w+\.py)(?:::(\w+))?`", text)
    assert len(named) > 40
    for file, function in named:
        path = ROOT / "tests" / file
        assert path.is_file(), f"docs/reliability.md names {file}, which does not exist"
        if function:
            tree = ast.parse(path.read_text())
            defined = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
            assert function in defined, f"docs/reliability.md names {file}::{function}"
