"""Every command's --help reads like a man page: no ``<bool>`` beside flags, no ``{name}`` in usage lines."""

from __future__ import annotations

import re

from click.testing import CliRunner

from frankenlab.cli.app import command


def _paths(cmd, prefix=()):
    yield prefix
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        yield from _paths(sub, (*prefix, name))


def test_help_has_no_bool_metavars_or_braced_names():
    root = command()
    runner = CliRunner()
    paths = list(_paths(root))
    assert len(paths) > 15  # the walk reaches the subcommands
    for path in paths:
        res = runner.invoke(root, [*path, "--help"], prog_name="frankenlab", terminal_width=100)
        assert res.exit_code == 0, (path, res.output)
        assert "<bool>" not in res.output, path
        usage = next(line for line in res.output.splitlines() if "Usage:" in line)
        assert not re.search(r"\{\w+\}", usage), (path, usage)
