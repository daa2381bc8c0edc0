"""How the training process' C allocator (glibc malloc) treats the memory training frees.

A training step allocates and frees the same large tensors every step (``[N, C]`` activations,
their gradients, per-edge temporaries). glibc serves blocks above its mmap threshold (dynamic,
at most 32 MiB) with a fresh ``mmap`` and returns them on ``free``, so on graphs of 10k+ regions
each step re-faults gigabytes of zeroed pages (at 30k regions, 27 % of the training's CPU time
was the kernel); blocks below it come from the heap, which fragments. Three policies
(:data:`POLICIES`), chosen with ``TrainConfig.malloc`` (``--set train.malloc=...``) or the
environment variable ``URBANREP_MALLOC`` (which wins):

* ``"auto"`` (default): ``"keep"``, unless a full-graph training of that many regions would
  need more than half of the memory the system has available (:func:`choose_policy`, about
  :data:`KEEP_BYTES_PER_REGION` per region under ``"keep"``), then ``"release"``.
* ``"keep"``: ``mallopt(M_MMAP_MAX, 0)`` and ``mallopt(M_TRIM_THRESHOLD, -1)``: every
  block comes from the heap and freed memory stays in the process for the next step, like a
  caching allocator with page release off. Least CPU (30k regions, 3 members: kernel share of
  the CPU time 27 % -> 8 %, CPU per epoch -11 to -18 %); the peak resident set is kept until
  the process ends and is about 14 % higher at 30k (heap fragmentation).
* ``"release"``: ``mallopt(M_MMAP_THRESHOLD, 1 MiB)``: every block of 1 MiB or more is mapped on
  its own and handed back when freed. Least memory (30k: peak 2.4 GB instead of 3.9 GB) for
  the most kernel time (CPU per epoch +40 %): for graphs that do not fit otherwise.
* ``"system"``: glibc as configured (its defaults, or ``MALLOC_*_`` / ``GLIBC_TUNABLES``).

Results never change (only where memory comes from). :func:`tune_allocator` applies a policy
at the start of :func:`urbanrep.train.train` (both modes); ``mallopt`` settings last for the
rest of the process. It leaves the process alone, with a debug log line saying why, where it
cannot or should not act: not glibc (macOS, Windows, musl), another allocator preloaded
(``LD_PRELOAD`` naming jemalloc, tcmalloc or mimalloc), or glibc's malloc already tuned through
the environment (``GLIBC_TUNABLES`` ``glibc.malloc.*`` or ``MALLOC_*_`` variables).
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger(__name__)

#: Allocator policies (see the module docstring).
POLICIES = ("auto", "keep", "release", "system")
#: Training memory per region under ``"keep"`` (measured: 145 KiB at 10k, 126 KiB at 30k regions,
#: NYC-180's modalities, default model), rounded up; ``"release"`` needs about 40 KiB.
KEEP_BYTES_PER_REGION = 160 * 1024
#: ``"auto"`` picks ``"release"`` when ``"keep"`` would need more than this share of ``MemAvailable``.
AUTO_MEMORY_SHARE = 0.5
#: ``mallopt`` parameters (glibc ``malloc.h``).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
#: ``M_TRIM_THRESHOLD`` value that switches trimming off (``man mallopt``).
NEVER_TRIM = -1
#: Blocks of this size or more are mapped on their own under ``"release"``.
RELEASE_THRESHOLD = 1 << 20
#: Environment variable naming a policy; it overrides the configuration.
ENV_VAR = "URBANREP_MALLOC"
_OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")
_GLIBC_ENV = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
_SETTINGS = {"keep": ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, NEVER_TRIM)),
             "release": ((M_MMAP_THRESHOLD, RELEASE_THRESHOLD),)}

_applied: str | None = None


def resolve_policy(configured: str, environ: dict[str, str] | None = None) -> str:
    """The policy in force: ``URBANREP_MALLOC`` when set, else ``configured``.

    Raises:
        ValueError: for a name that is not one of :data:`POLICIES` (the message names the source).
    """
    env = os.environ if environ is None else environ
    name, source = (env[ENV_VAR].strip().lower(), ENV_VAR) if env.get(ENV_VAR, "").strip() else (
        configured, "TrainConfig.malloc")
    if name not in POLICIES:
        raise ValueError(f"{source}={name!r}: use one of {', '.join(POLICIES)}")
    return name


def allocator_blocker(environ: dict[str, str] | None = None) -> str | None:
    """Why :func:`tune_allocator` would leave this process alone (None: it can act).

    Args:
        environ: Environment to inspect (default ``os.environ``).
    """
    env = os.environ if environ is None else environ
    preload = env.get("LD_PRELOAD", "")
    other = [name for name in _OTHER_ALLOCATORS if name in preload]
    if other:
        return f"LD_PRELOAD loads {other[0]}"
    if "glibc.malloc." in env.get("GLIBC_TUNABLES", "") or any(k in env for k in _GLIBC_ENV):
        return "glibc malloc is already tuned by the environment (GLIBC_TUNABLES / MALLOC_*_)"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return f"not glibc ({platform.system()} {platform.libc_ver()[0] or 'unknown libc'})"
    return None


def proc_kib(path: str, field: str) -> int | None:
    """The ``field: <n> kB`` line of a ``/proc`` file (``/proc/meminfo``, ``/proc/self/status``), KiB.

    None where the file or the field is missing (not Linux) or does not parse.
    """
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def available_memory_bytes() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes (None where unknown)."""
    kib = proc_kib("/proc/meminfo", "MemAvailable")
    return None if kib is None else kib * 1024


def choose_policy(policy: str, num_regions: int | None, available: int | None) -> tuple[str, str]:
    """Resolve ``"auto"``: ``("keep" | "release", why)``; other policies are returned as they are.

    Args:
        policy: A name from :data:`POLICIES`.
        num_regions: Regions of a full-graph training (None: mini-batch or unknown: ``"keep"``).
        available: Bytes of memory available (None: unknown: ``"keep"``).
    """
    if policy != "auto":
        return policy, f"malloc={policy}"
    if num_regions is None or available is None:
        return "keep", "auto: keep (memory need or availability unknown)"
    need = num_regions * KEEP_BYTES_PER_REGION
    if need > AUTO_MEMORY_SHARE * available:
        return "release", (f"auto: release ({num_regions:,} regions need about {need / 2**30:.1f} GB with keep, "
                           f"{available / 2**30:.1f} GB available)")
    return "keep", f"auto: keep ({num_regions:,} regions need about {need / 2**30:.1f} GB)"


def applied_policy() -> str | None:
    """The policy :func:`tune_allocator` last applied in this process (None: none yet)."""
    return _applied


def tune_allocator(policy: str = "auto", num_regions: int | None = None) -> bool:
    """Apply an allocator policy to this process (see the module docstring).

    Args:
        policy: ``"auto"``, ``"keep"``, ``"release"`` or ``"system"`` (nothing is changed);
            ``URBANREP_MALLOC`` overrides it.
        num_regions: Regions of the full-graph training about to run (for ``"auto"``).

    Returns:
        Whether ``mallopt`` settings of the policy are in effect.

    Raises:
        ValueError: unknown policy name.
    """
    global _applied
    asked = resolve_policy(policy)
    policy, why_policy = choose_policy(asked, num_regions, available_memory_bytes())
    log.log(logging.INFO if asked == "auto" and policy == "release" else logging.DEBUG, "malloc policy: %s", why_policy)
    if policy == "system":
        log.debug("malloc left as it is: policy 'system'")
        return False
    if _applied == policy:
        return True
    why = allocator_blocker()
    if why is not None:
        log.debug("malloc left as it is: %s", why)
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError) as exc:  # pragma: no cover - glibc always has mallopt
        log.debug("malloc left as it is: no mallopt (%s)", exc)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if policy == "release" and _applied == "keep":  # undo keep's settings first
        mallopt(M_MMAP_MAX, 65536)
    if not all(mallopt(param, value) == 1 for param, value in _SETTINGS[policy]):  # pragma: no cover
        log.debug("malloc left as it is: mallopt refused the %r settings", policy)
        return False
    _applied = policy
    log.debug("malloc policy %r applied (%s)", policy, _SETTINGS[policy])
    return True
