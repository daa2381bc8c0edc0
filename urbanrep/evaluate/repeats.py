"""The repeats of a cross-validated probe, one after the other or in parallel processes.

Every repeat of the strict protocol (one shuffled split per seed) is independent of the others and
fully seeded, so running them in parallel (``EvalConfig.repeat_jobs``) gives the same numbers as
running them in turn; only the wall time changes.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits

from urbanrep.cores import free_cores
from urbanrep.evaluate.protocols import EvalConfig, fold_probe, outer_splits

log = logging.getLogger(__name__)

#: Fewest rows on which the automatic choice (``EvalConfig.repeat_jobs=0``) runs a slow probe's
#: repeats in worker processes: below it, starting them costs more than they save.
AUTO_PARALLEL_ROWS = 300

#: ``fn(*args, on_fold=callback or None) -> (predictions of one repeat, outer folds run)``.
RepeatFn = Callable[..., tuple[np.ndarray, int]]


def repeat_processes(config: EvalConfig, repeats: int, slow: bool, rows: int) -> int:
    """Processes the repeats run in: ``config.repeat_jobs``, or the automatic choice for 0.

    Automatic: the cores the load average leaves free (this process's own core not held against
    it), at most one per repeat, where the probe is ``slow`` and fit on at least
    :data:`AUTO_PARALLEL_ROWS` rows; else 1.
    """
    if config.repeat_jobs == -1:
        return repeats
    if config.repeat_jobs == 0:
        return min(repeats, free_cores(own=1.0)) if slow and rows >= AUTO_PARALLEL_ROWS else 1
    return min(config.repeat_jobs, repeats)


def map_repeats(fn: RepeatFn, repeats: Sequence[tuple[Any, ...]], config: EvalConfig,
                on_fold: Callable[[], None] | None = None, *, slow: bool = False, rows: int = 0) -> list[np.ndarray]:
    """``fn`` on every repeat's arguments, in order; in worker processes when :func:`repeat_processes` says so.

    Args:
        fn: A module-level function (it is sent to worker processes) running one repeat.
        repeats: One argument tuple per repeat.
        config: Evaluation configuration (``repeat_jobs``, ``blas_threads`` of each worker).
        on_fold: Called once per outer fold: as each fold ends when the repeats run in this
            process, for all of a repeat's folds as it ends when they run in workers.
        slow: The probe is slow enough for worker processes to pay (automatic choice).
        rows: Regions the probe is fit on (automatic choice).

    Returns:
        Each repeat's predictions, in the order of ``repeats``.
    """
    jobs = repeat_processes(config, len(repeats), slow, rows)
    if jobs <= 1:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return [fn(*args, on_fold=on_fold)[0] for args in repeats]
    from joblib import Parallel, delayed

    if config.repeat_jobs == 0:
        log.info("evaluating %d repeats on %d rows in %d processes (cores free by the load average; "
                 "evaluate.repeat_jobs=1 keeps them in this process, the numbers are the same)", len(repeats), rows,
                 jobs)
    out = []
    for preds, folds in Parallel(n_jobs=jobs, return_as="generator")(
            delayed(_in_worker)(fn, args, config.blas_threads) for args in repeats):
        out.append(preds)
        if on_fold is not None:
            for _ in range(folds):
                on_fold()
    return out


def oof_repeat(x: np.ndarray, y: np.ndarray, config: EvalConfig, seed: int, g: np.ndarray | None, proto: Any,
               finish: Callable[[np.ndarray, int], np.ndarray],
               on_fold: Callable[[], None] | None) -> tuple[np.ndarray, int]:
    """Out-of-fold predictions of one repeat, shaped like ``y``, and its number of outer folds.

    Args:
        x: ``[n, D]`` features.
        y: ``[n]`` or ``[n, K]`` observed values.
        config: Evaluation configuration (the outer folds).
        seed: Seed of this repeat.
        g: ``[n]`` spatial block ids of this repeat, or None.
        proto: The repeat's unfitted probe; each outer fold fits a fresh copy (``fold_probe``).
        finish: A module-level function turning a fold's raw predictions and its number of rows
            into the rows of the output.
        on_fold: Called after each outer fold, or None.
    """
    out = np.empty(y.shape, dtype=np.float64)
    folds = 0
    for train, test in outer_splits(len(y), config, seed, g):
        folds += 1
        model = fold_probe(proto, config, seed, None if g is None else g[train]).fit(x[train], y[train])
        out[test] = finish(np.asarray(model.predict(x[test])), len(test))
        if on_fold is not None:
            on_fold()
    return out, folds


def _in_worker(fn: RepeatFn, args: tuple[Any, ...], blas_threads: int | None) -> tuple[np.ndarray, int]:
    limits = threadpool_limits(limits=blas_threads) if blas_threads is not None else contextlib.nullcontext()
    with limits, warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return fn(*args, on_fold=None)
