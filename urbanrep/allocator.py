"""Keep freed memory in the training process instead of handing it back to the kernel (glibc).

glibc's ``malloc`` serves every block above its mmap threshold (at most 32 MiB) with a fresh
``mmap`` and returns it with ``munmap`` on ``free``, and trims the top of the heap whenever more
than 128 KiB is free there. A training step allocates and frees the same large tensors every
step (per-edge messages, ``[N, C]`` activations and their gradients), so on graphs of 10k+
regions each step re-faults gigabytes of fresh zeroed pages: at 30k regions about half of the
step's CPU time was the kernel (issue 18; a caching allocator preloaded with page release off
cut CPU per step by 39 % with bit-identical losses).

:func:`tune_allocator` makes glibc behave like that caching allocator for the rest of the
process: ``mallopt(M_MMAP_MAX, 0)`` (large blocks come from the heap, where freed blocks are
reused) and ``mallopt(M_TRIM_THRESHOLD, -1)`` (no trimming: freed heap memory is kept for the next step).
The price is that the process keeps its peak resident set until it ends, which is what a
training process does anyway. Results do not change (only where memory comes from).

It is applied at the start of :func:`urbanrep.train.train` (both modes) unless
``TrainConfig.tune_malloc=False`` (``--set train.tune_malloc=false``) or the environment sets
``URBANREP_TUNE_MALLOC=0``. It leaves the process alone where it cannot or should not act, and
says why in a debug log line: not glibc (macOS, Windows, musl), another allocator preloaded
(``LD_PRELOAD`` naming jemalloc, tcmalloc or mimalloc), or glibc's malloc already tuned through
the environment (``GLIBC_TUNABLES`` ``glibc.malloc.*`` or ``MALLOC_*_`` variables).
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger(__name__)

#: ``mallopt`` parameters (glibc ``malloc.h``).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
#: Environment switch: ``0`` / ``false`` / ``no`` / ``off`` leaves glibc's defaults.
ENV_SWITCH = "URBANREP_TUNE_MALLOC"
#: ``M_TRIM_THRESHOLD`` value that switches trimming off (``man mallopt``).
NEVER_TRIM = -1
_OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")
_GLIBC_ENV = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")

_applied = False


def allocator_blocker(environ: dict[str, str] | None = None) -> str | None:
    """Why :func:`tune_allocator` would leave this process alone (None: it can act).

    Args:
        environ: Environment to inspect (default ``os.environ``).
    """
    env = os.environ if environ is None else environ
    if env.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return f"{ENV_SWITCH}={env[ENV_SWITCH]}"
    preload = env.get("LD_PRELOAD", "")
    other = [name for name in _OTHER_ALLOCATORS if name in preload]
    if other:
        return f"LD_PRELOAD loads {other[0]}"
    if "glibc.malloc." in env.get("GLIBC_TUNABLES", "") or any(k in env for k in _GLIBC_ENV):
        return "glibc malloc is already tuned by the environment (GLIBC_TUNABLES / MALLOC_*_)"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return f"not glibc ({platform.system()} {platform.libc_ver()[0] or 'unknown libc'})"
    return None


def tune_allocator() -> bool:
    """Switch glibc malloc to keeping freed memory for reuse (see the module docstring).

    Idempotent; process-wide from the first successful call on.

    Returns:
        Whether the tuning is in effect (applied now or earlier).
    """
    global _applied
    if _applied:
        return True
    why = allocator_blocker()
    if why is not None:
        log.debug("malloc left as it is: %s", why)
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError) as exc:  # pragma: no cover - glibc always has mallopt
        log.debug("malloc left as it is: no mallopt (%s)", exc)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, NEVER_TRIM) == 1
    if not ok:  # pragma: no cover - glibc accepts both
        log.debug("malloc left as it is: mallopt refused the settings")
        return False
    _applied = True
    log.debug("malloc tuned: large blocks from the heap (M_MMAP_MAX=0), freed memory kept (M_TRIM_THRESHOLD)")
    return True
