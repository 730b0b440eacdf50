"""README: the Python snippet runs as written, and CI runs README's test command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_python_snippet_runs(capsys) -> None:  # type: ignore[no-untyped-def]
    (snippet,) = code_blocks("python")
    exec(compile(snippet, "README.md", "exec"), {})
    assert "torch.Size([4, 3, 16, 16])" in capsys.readouterr().out


def test_exactly_two_commands_and_ci_runs_the_test_one() -> None:
    commands = [block.strip() for block in code_blocks("bash")]
    assert len(commands) == 2
    demo, tests = commands
    assert demo.endswith("ddpmkit run examples/shapes.toml")
    assert tests.endswith("python -m pytest -q")
    ci = (ROOT / ".ci" / "run").read_text()
    assert tests in ci
