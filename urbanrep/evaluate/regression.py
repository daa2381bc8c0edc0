"""Scalar regression probes: out-of-fold predictions and pooled metrics."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

from urbanrep.evaluate.protocols import EvalConfig, make_regressor
from urbanrep.evaluate.repeats import map_repeats, oof_repeat

log = logging.getLogger(__name__)


def oof_predictions_array(x: np.ndarray, y: np.ndarray, config: EvalConfig, regressor: str = "ridge",
                          groups: list[np.ndarray] | None = None,
                          on_fold: Callable[[], None] | None = None) -> np.ndarray:
    """Out-of-fold predictions of one scalar target, one row per repeat.

    Each fold fits a fresh probe (:func:`~urbanrep.evaluate.protocols.make_regressor`) on the
    training rows only and predicts the test rows; scaling and alpha selection live inside the
    probe, so they never see a test row.

    Args:
        x: ``[n, D]`` features of the regions that have a value.
        y: ``[n]`` observed target.
        config: Evaluation configuration.
        regressor: Probe name.
        groups: Optional per-repeat ``[n]`` spatial block ids (one array per repeat seed).
        on_fold: Called after each outer fold (progress reporting).

    Returns:
        ``[R, n]`` predictions (``R`` = number of repeats), clipped at 0 when ``config.clip``.
    """
    repeats = [(x, y, config, seed, groups[r] if groups is not None else None,
                make_regressor(regressor, config, seed), _flat) for r, seed in enumerate(config.repeat_seeds)]
    preds = np.stack(map_repeats(oof_repeat, repeats, config, on_fold, slow=regressor == "mlp", rows=len(y))
                     ).astype(np.float64, copy=False)
    if config.clip:
        np.maximum(preds, 0.0, out=preds)
    return preds


def _flat(predictions: np.ndarray, rows: int) -> np.ndarray:
    """A fold's scalar predictions as ``[rows]`` float64."""
    return predictions.astype(np.float64, copy=False).reshape(rows)


def regression_metrics(y: np.ndarray, preds: np.ndarray) -> dict[str, Any]:
    """Pooled out-of-fold MAE / RMSE / R² per repeat, then mean and std over repeats.

    Args:
        y: ``[n]`` observed values.
        preds: ``[R, n]`` out-of-fold predictions, one row per repeat.

    Returns:
        ``{"mae", "rmse", "r2", "mae_std", "rmse_std", "r2_std", "repeats", "n"}``; stds are
        population standard deviations over repeats (0 for a single repeat).
    """
    per = {
        "mae": [mean_absolute_error(y, p) for p in preds],
        "rmse": [float(np.sqrt(mean_squared_error(y, p))) for p in preds],
        "r2": [r2_score(y, p) for p in preds],
    }
    out: dict[str, Any] = {}
    for k, vals in per.items():
        out[k] = float(np.mean(vals))
    for k, vals in per.items():
        out[f"{k}_std"] = float(np.std(vals))
    out["repeats"] = int(preds.shape[0])
    out["n"] = int(len(y))
    return out
