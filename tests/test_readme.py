"""The README's promises: its two set-up commands (its tour runs in test_docs.py)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def _setup_commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", README.read_text(), re.S)
    assert block is not None, "README must start with a bash block of set-up commands"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_has_exactly_two_setup_commands():
    commands = _setup_commands()
    assert len(commands) == 2
    assert "psy run" in commands[0]
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command():
    test_command = _setup_commands()[1]
    ci = (ROOT / ".ci" / "run").read_text()
    # CI calls python3 explicitly; otherwise the command must be the README's.
    assert test_command.replace("pip install", "python3 -m pip install").replace(
        "python -m pytest", "python3 -m pytest"
    ) in ci

