"""Every `frankenlab ...` line in README names a real command and only options it has."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from frankenlab.cli.app import app

README = Path(__file__).resolve().parents[1] / "README.md"


def _commands() -> list[str]:
    text = README.read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    lines = [ln.split("#")[0].strip() for b in blocks for ln in b.splitlines()]
    return [ln for ln in lines if ln.startswith("frankenlab ")]


def _help(path: list[str]) -> str:
    res = CliRunner().invoke(app, [*path, "--help"], terminal_width=200, env={"COLUMNS": "200", "TERM": "dumb"})
    assert res.exit_code == 0, f"`frankenlab {' '.join(path)} --help` failed: {res.output}"
    return res.output


@pytest.mark.parametrize("line", _commands())
def test_readme_command_exists(line):
    tokens = shlex.split(line.replace("[", " ").replace("]", " ").replace("|", " "))[1:]
    path: list[str] = []
    for tok in tokens:
        if tok.startswith("-") or not re.fullmatch(r"[a-z][a-z-]*", tok):
            break
        path.append(tok)
    help_text = _help(path)
    for tok in tokens:
        if tok.startswith("--"):
            opt = tok.split("=")[0]
            assert opt in help_text, f"{line!r}: {opt} is not an option of `frankenlab {' '.join(path)}`"


def test_readme_has_the_two_commands():
    text = README.read_text()
    assert "make demo" in text and "make test" in text
    assert len(_commands()) >= 15
