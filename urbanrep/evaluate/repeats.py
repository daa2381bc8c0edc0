"""The repeats of a cross-validated probe, one after the other or in parallel processes.

Every repeat of the strict protocol (one shuffled split per seed) is independent of the others and
fully seeded, so running them in parallel (``EvalConfig.repeat_jobs``) gives the same numbers as
running them in turn; only the wall time changes.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits

from urbanrep.evaluate.protocols import EvalConfig

#: ``fn(*args, on_fold=callback or None) -> (predictions of one repeat, outer folds run)``.
RepeatFn = Callable[..., tuple[np.ndarray, int]]


def map_repeats(fn: RepeatFn, repeats: Sequence[tuple[Any, ...]], config: EvalConfig,
                on_fold: Callable[[], None] | None = None) -> list[np.ndarray]:
    """``fn`` on every repeat's arguments, in order; in ``config.repeat_jobs`` processes when above 1.

    Args:
        fn: A module-level function (it is sent to worker processes) running one repeat.
        repeats: One argument tuple per repeat.
        config: Evaluation configuration (``repeat_jobs``, ``blas_threads`` of each worker).
        on_fold: Called once per outer fold: as each fold ends when the repeats run in this
            process, for all of a repeat's folds as it ends when they run in workers.

    Returns:
        Each repeat's predictions, in the order of ``repeats``.
    """
    if config.repeat_jobs == 1 or len(repeats) < 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return [fn(*args, on_fold=on_fold)[0] for args in repeats]
    from joblib import Parallel, delayed

    jobs = len(repeats) if config.repeat_jobs == -1 else min(config.repeat_jobs, len(repeats))
    out = []
    for preds, folds in Parallel(n_jobs=jobs, return_as="generator")(
            delayed(_in_worker)(fn, args, config.blas_threads) for args in repeats):
        out.append(preds)
        if on_fold is not None:
            for _ in range(folds):
                on_fold()
    return out


def _in_worker(fn: RepeatFn, args: tuple[Any, ...], blas_threads: int | None) -> tuple[np.ndarray, int]:
    limits = threadpool_limits(limits=blas_threads) if blas_threads is not None else contextlib.nullcontext()
    with limits, warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return fn(*args, on_fold=None)
