"""Thread count: one rule for every command (--threads, $FRANKENLAB_THREADS, the process's CPU affinity)."""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch
import typer

from frankenlab.cli.app import app, main
from frankenlab.errors import FrankenlabError
from frankenlab.runtime import threads
from frankenlab.runtime.threads import ENV, ThreadsError, available_cores, resolve_threads, set_threads, torch_threads


@pytest.fixture(autouse=True)
def _restore(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_default_is_the_idle_part_of_the_affinity_mask(monkeypatch):
    assert available_cores() == len(os.sched_getaffinity(0))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(threads, "_runnable", lambda: 1)  # only this process runs
    assert resolve_threads() == 4
    monkeypatch.setattr(threads, "_runnable", lambda: 3)  # two other jobs running now
    assert resolve_threads() == 2
    monkeypatch.setattr(threads, "_runnable", lambda: 9)  # more jobs than cores: still one thread
    assert resolve_threads() == 1
    monkeypatch.setattr(threads, "_runnable", lambda: None)  # no /proc/loadavg: the affinity mask
    assert resolve_threads() == 4
    monkeypatch.setattr(threads, "_runnable", lambda: 3)
    assert resolve_threads(4) == 4  # an explicit count is never reduced


def test_busy_cores_is_the_median_of_its_samples(monkeypatch):
    seq = iter([1, 6, 3, 3, 2])
    monkeypatch.setattr(threads, "_runnable", lambda: next(seq))
    assert threads.busy_cores(samples=5, interval_s=0) == 2  # median 3, minus this process


def test_runnable_reads_proc_loadavg(tmp_path, monkeypatch):
    fake = tmp_path / "loadavg"
    fake.write_text("3.41 2.24 2.24 4/94 20131\n")
    monkeypatch.setattr(threads, "LOADAVG", str(fake))
    assert threads._runnable() == 4
    fake.write_text("garbage")
    assert threads._runnable() is None
    monkeypatch.setattr(threads, "LOADAVG", str(tmp_path / "absent"))
    assert threads._runnable() is None and threads.busy_cores() == 0


def test_affinity_not_cpu_count(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    assert resolve_threads() == 1


def test_explicit_then_env(monkeypatch):
    monkeypatch.setenv(ENV, "3")
    assert resolve_threads() == 3
    assert resolve_threads(1) == 1  # an explicit count wins over the environment


@pytest.mark.parametrize("bad", ["zero", "0", "-2", "1.5"])
def test_bad_env_is_one_clear_error(monkeypatch, bad):
    monkeypatch.setenv(ENV, bad)
    with pytest.raises(ThreadsError, match=ENV) as exc:
        resolve_threads()
    assert isinstance(exc.value, FrankenlabError)


@pytest.mark.parametrize("bad", [0, -1, True, 2.0])
def test_bad_explicit(bad):
    with pytest.raises(ThreadsError, match="--threads"):
        resolve_threads(bad)


def test_set_and_restore():
    torch.set_num_threads(2)
    assert set_threads(1) == 1 and torch.get_num_threads() == 1
    with torch_threads(2) as n:
        assert n == 2 and torch.get_num_threads() == 2
    assert torch.get_num_threads() == 1


def _commands(group: Any, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    out = []
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):  # a group (typer may ship its own click)
            if cmd.callback is not None and cmd.invoke_without_command:
                out.append(((*prefix, name), cmd))  # `compare` runs itself and has subcommands
            out += _commands(cmd, (*prefix, name))
        else:
            out.append(((*prefix, name), cmd))
    return out


def test_every_command_accepts_threads():
    root = typer.main.get_command(app)
    cmds = _commands(root)
    assert len(cmds) >= 15
    missing = [" ".join(path) for path, cmd in cmds if not any("--threads" in p.opts for p in cmd.params)]
    assert not missing, f"commands without --threads: {missing}"


def test_command_applies_threads(tmp_path, capsys):
    torch.set_num_threads(2)
    with pytest.raises(SystemExit) as exc:
        main(["probe", "pairs", "make", "--out", str(tmp_path / "p"), "--n", "1", "--threads", "1"])
    assert exc.value.code == 0
    assert torch.get_num_threads() == 1


def test_root_option_sets_the_environment(tmp_path, monkeypatch):
    torch.set_num_threads(2)
    with pytest.raises(SystemExit) as exc:
        main(["--threads", "1", "probe", "pairs", "make", "--out", str(tmp_path / "p"), "--n", "1"])
    assert exc.value.code == 0
    assert os.environ.get(ENV) == "1" and torch.get_num_threads() == 1
    monkeypatch.delenv(ENV)


def test_bad_threads_exits_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(ENV, "lots")
    with pytest.raises(SystemExit) as exc:
        main(["probe", "pairs", "make", "--out", str(tmp_path / "p"), "--n", "1"])
    assert exc.value.code == 2
    assert ENV in capsys.readouterr().err
    assert not (tmp_path / "p").exists()

