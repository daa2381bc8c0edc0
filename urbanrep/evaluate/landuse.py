"""Share-vector probes (e.g. land-use shares) evaluated as distributions: L1, KL, cosine.

The metrics follow RegionDCL's land-use evaluation: per region, the L1 distance between the
observed and predicted share vectors, the KL divergence ``KL(observed || predicted)`` and their
cosine similarity, each averaged over regions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from urbanrep.evaluate.protocols import EvalConfig, make_share_model
from urbanrep.evaluate.repeats import map_repeats, oof_repeat


def to_distribution(values: np.ndarray) -> np.ndarray:
    """Clip at 0 and renormalise rows to sum 1; an all-zero row becomes uniform.

    Args:
        values: ``[n, K]`` non-normalised scores or shares.

    Returns:
        ``[n, K]`` rows on the probability simplex.
    """
    v = np.clip(np.asarray(values, dtype=np.float64), 0.0, None)
    s = v.sum(axis=1, keepdims=True)
    k = v.shape[1]
    return np.where(s > 0, v / np.where(s > 0, s, 1.0), 1.0 / k)


def share_rows(table: np.ndarray) -> np.ndarray:
    """Which rows of an observed share table can be evaluated (all finite, non-negative, sum > 0).

    Args:
        table: ``[N, K]`` observed shares or counts (NaN where missing).

    Returns:
        ``[N]`` bool mask.
    """
    t = np.asarray(table, dtype=np.float64)
    finite = np.isfinite(t).all(axis=1)
    t0 = np.where(np.isfinite(t), t, 0.0)
    return finite & (t0 >= 0).all(axis=1) & (t0.sum(axis=1) > 0)


def share_oof_predictions(x: np.ndarray, y: np.ndarray, config: EvalConfig,
                          groups: list[np.ndarray] | None = None,
                          on_fold: Callable[[], None] | None = None) -> np.ndarray:
    """Out-of-fold predicted share vectors, one block per repeat.

    A multi-output probe (:func:`~urbanrep.evaluate.protocols.make_share_model`) is fit on the
    training fold; its predictions are clipped at 0 and renormalised.

    Args:
        x: ``[n, D]`` features.
        y: ``[n, K]`` observed shares (rows sum to 1).
        config: Evaluation configuration.
        groups: Optional per-repeat ``[n]`` spatial block ids.
        on_fold: Called after each outer fold (progress reporting).

    Returns:
        ``[R, n, K]`` predicted distributions.
    """
    repeats = [(x, y, config, seed, groups[r] if groups is not None else None,
                make_share_model(config, seed), _fold_distributions) for r, seed in enumerate(config.repeat_seeds)]
    preds = np.stack(map_repeats(oof_repeat, repeats, config, on_fold, slow=True, rows=len(y))
                     ).astype(np.float64, copy=False)
    return preds


def _fold_distributions(predictions: np.ndarray, rows: int) -> np.ndarray:
    """A fold's share predictions as ``[rows, K]`` distributions (:func:`to_distribution`)."""
    return to_distribution(predictions.reshape(rows, -1))


def distribution_scores(y: np.ndarray, p: np.ndarray, eps: float = 1e-9) -> dict[str, float]:
    """Mean over regions of L1, KL(y || p) and cosine similarity.

    Args:
        y: ``[n, K]`` observed distributions.
        p: ``[n, K]`` predicted distributions.
        eps: Added to both distributions inside the logarithm.
    """
    l1 = np.abs(y - p).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = y * np.log((y + eps) / (p + eps))
    kl = np.where(y > 0, terms, 0.0).sum(axis=1)  # 0 * log 0 = 0
    denom = np.linalg.norm(y, axis=1) * np.linalg.norm(p, axis=1)
    cos = (y * p).sum(axis=1) / np.where(denom > 0, denom, 1.0)
    return {"l1": float(l1.mean()), "kl": float(kl.mean()), "cosine": float(cos.mean())}


def share_metrics(y: np.ndarray, preds: np.ndarray, eps: float = 1e-9) -> dict[str, Any]:
    """Distribution metrics per repeat, then mean and std over repeats.

    Args:
        y: ``[n, K]`` observed distributions.
        preds: ``[R, n, K]`` out-of-fold predicted distributions.
        eps: KL epsilon.

    Returns:
        ``{"l1", "kl", "cosine", "l1_std", "kl_std", "cosine_std", "repeats", "n", "classes"}``.
    """
    per = [distribution_scores(y, p, eps) for p in preds]
    out: dict[str, Any] = {k: float(np.mean([d[k] for d in per])) for k in ("l1", "kl", "cosine")}
    out.update({f"{k}_std": float(np.std([d[k] for d in per])) for k in ("l1", "kl", "cosine")})
    out.update({"repeats": int(preds.shape[0]), "n": int(y.shape[0]), "classes": int(y.shape[1])})
    return out
