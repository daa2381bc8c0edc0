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


def free_cores() -> int:
    """Cores the 1-minute load average leaves free (at least 1)."""
    cores, load = cores_and_load()
    return max(1, round(cores - load))
