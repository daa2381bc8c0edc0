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


def free_cores(own: float = 0.0) -> int:
    """Cores the 1-minute load average leaves free (at least 1, at most every core).

    Args:
        own: Busy cores of the caller's own that the load average already counts (a process that
            has been computing for a while counts about 1), so they are not held against it.
    """
    cores, load = cores_and_load()
    return max(1, min(cores, round(cores - max(0.0, load - own))))
