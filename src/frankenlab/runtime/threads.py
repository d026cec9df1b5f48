"""One place that decides how many CPU threads torch uses, for every command.

torch's default (the physical cores it sees) ignores CPU affinity (taskset, cgroups, a Slurm
allocation), and its OpenMP workers spin at barriers: on two cores shared with other jobs, an
oversubscribed probe ran 4× slower than on one thread (measured, docs/probe.md). So every entry point
sets the count explicitly: ``--threads N``, else ``FRANKENLAB_THREADS``, else the cores this process
may run on (``os.sched_getaffinity``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from frankenlab.errors import FrankenlabError

__all__ = ["ENV", "ThreadsError", "available_cores", "passive_wait", "resolve_threads", "set_threads",
           "torch_threads"]

#: Environment variable read when no ``--threads`` is given.
ENV = "FRANKENLAB_THREADS"


def passive_wait() -> bool:
    """Let idle OpenMP workers sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``), unless the user chose.

    OpenMP reads the variable once, when torch's runtime loads, so this acts only before ``import torch``
    (the CLI calls it first thing). Spinning workers burn the cores other jobs need and then wait for
    them: a layer-ablation probe on 2 cores shared with other jobs took 13–17 s on 2 threads, 5.9–8.4 s
    with passive waiting, 5.2–5.7 s on one thread (docs/probe.md). Returns whether it took effect.
    """
    import sys

    if "torch" in sys.modules or "OMP_WAIT_POLICY" in os.environ:
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True


class ThreadsError(FrankenlabError):
    """A thread count that is not a positive integer."""


def available_cores() -> int:
    """CPU cores this process may run on (affinity mask, so taskset / cgroup cpusets count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS and Windows have no sched_getaffinity
        return max(1, os.cpu_count() or 1)


def resolve_threads(threads: int | None = None) -> int:
    """The count to use: ``threads``, else $FRANKENLAB_THREADS, else `available_cores()`."""
    if threads is None:
        raw = os.environ.get(ENV, "").strip()
        if raw:
            try:
                threads = int(raw)
            except ValueError:
                raise ThreadsError(f"{ENV}={raw!r} is not an integer; set it to a thread count such as 1 or 4, "
                                   "or unset it to use every core this process may run on.") from None
            source = f"{ENV}={raw}"
        else:
            return available_cores()
    else:
        source = f"--threads {threads}"
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ThreadsError(f"{source}: the thread count must be an integer ≥ 1.")
    return threads


def set_threads(threads: int | None = None) -> int:
    """Set torch's intra-op thread count for the rest of the process; returns the count set.

    Inter-op threads are capped to the same count while torch still allows it (only before its
    first parallel work).
    """
    import torch

    n = resolve_threads(threads)
    torch.set_num_threads(n)
    with contextlib.suppress(RuntimeError):  # already started: torch refuses, the intra-op count is what matters
        if torch.get_num_interop_threads() > n:
            torch.set_num_interop_threads(n)
    return n


@contextlib.contextmanager
def torch_threads(threads: int | None = None) -> Iterator[int]:
    """`set_threads` inside the block, torch's previous intra-op count restored afterwards (library calls)."""
    import torch

    before = torch.get_num_threads()
    n = resolve_threads(threads)
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)
