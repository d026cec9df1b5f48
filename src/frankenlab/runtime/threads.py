"""One place that decides how many CPU threads torch uses, for every command.

torch's default (the physical cores it sees) ignores CPU affinity (taskset, cgroups, a Slurm
allocation) and other jobs, and its OpenMP workers spin at barriers: on two cores shared with other
jobs, two threads ran a layer-ablation probe 2.3–3× slower than one (measured, docs/probe.md). So
every entry point sets the count explicitly: ``--threads N``, else ``FRANKENLAB_THREADS``, else the
cores this process may run on (``os.sched_getaffinity``) minus those other processes are running on
right now (the runnable count of /proc/loadavg, sampled at start), at least one.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

from frankenlab.errors import FrankenlabError

__all__ = ["ENV", "ThreadsError", "available_cores", "busy_cores", "resolve_threads", "set_threads",
           "torch_threads"]

#: Environment variable read when no ``--threads`` is given.
ENV = "FRANKENLAB_THREADS"
LOADAVG = "/proc/loadavg"


class ThreadsError(FrankenlabError):
    """A thread count that is not a positive integer."""


def available_cores() -> int:
    """CPU cores this process may run on (affinity mask, so taskset / cgroup cpusets count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS and Windows have no sched_getaffinity
        return max(1, os.cpu_count() or 1)


def _runnable() -> int | None:
    """Tasks running or ready to run on the whole machine now, this one included (4th field of /proc/loadavg)."""
    try:
        with open(LOADAVG, encoding="ascii") as fh:
            return int(fh.read().split()[3].split("/")[0])
    except (OSError, IndexError, ValueError):
        return None


def busy_cores(samples: int = 5, interval_s: float = 0.01) -> int:
    """Cores other processes keep busy right now: the median runnable count over a few samples, minus this one.

    The instantaneous count, not the 1-minute load average, so that a command run right after another
    one (which leaves the average high for minutes) still gets every idle core. 0 where /proc is absent.
    """
    seen = []
    for i in range(samples):
        n = _runnable()
        if n is None:
            return 0
        seen.append(n)
        if i + 1 < samples:
            time.sleep(interval_s)
    seen.sort()
    return max(0, seen[len(seen) // 2] - 1)


def resolve_threads(threads: int | None = None) -> int:
    """The count to use: ``threads``, else $FRANKENLAB_THREADS, else the idle cores this process may use."""
    if threads is None:
        raw = os.environ.get(ENV, "").strip()
        if raw:
            try:
                threads = int(raw)
            except ValueError:
                raise ThreadsError(f"{ENV}={raw!r} is not an integer; set it to a thread count such as 1 or 4, "
                                   "or unset it to use the idle cores this process may run on.") from None
            source = f"{ENV}={raw}"
        else:
            cores = available_cores()
            return max(1, cores - min(cores, busy_cores()))
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
