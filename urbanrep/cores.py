"""What this machine has free: the cores this process may use and how busy they are."""

from __future__ import annotations

import os


def cores_and_load() -> tuple[int, float]:
    """Cores this process may run on and the 1-minute load average (0.0 where unknown)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    return cores, load


def free_of(cores: int, load: float, own: float = 0.0) -> int:
    """Of ``cores``, those a 1-minute load average of ``load`` leaves free (at least 1, at most every core).

    Args:
        cores: Cores this process may run on.
        load: The 1-minute load average.
        own: Busy cores of the caller's own that the load average already counts (a process that
            has been computing for a while counts about 1), so they are not held against it.
    """
    return max(1, min(cores, round(cores - max(0.0, load - own))))


def free_cores(own: float = 0.0) -> int:
    """:func:`free_of` this machine's :func:`cores_and_load`."""
    return free_of(*cores_and_load(), own=own)
