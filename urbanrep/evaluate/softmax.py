"""Softmax regression on soft labels: a linear probe whose predictions are distributions."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.metrics import make_scorer
from sklearn.utils.validation import check_is_fitted


class SoftmaxRegression(RegressorMixin, BaseEstimator):
    """Multinomial logistic regression fit to share vectors (soft labels) with an L2 penalty.

    Minimises ``sum_i CE(y_i, softmax(x_i W + b)) + alpha / 2 * ||W||²`` with L-BFGS. Every
    prediction is strictly positive and sums to 1, so KL divergences stay finite.

    Args:
        alpha: L2 penalty on ``W`` (the intercept is not penalised).
        max_iter: L-BFGS iterations.
        tol: L-BFGS gradient tolerance.
    """

    def __init__(self, alpha: float = 1.0, max_iter: int = 500, tol: float = 1e-6) -> None:
        self.alpha = alpha
        self.max_iter = max_iter
        self.tol = tol

    def fit(self, x: Any, y: Any) -> SoftmaxRegression:
        """Fit on features ``x`` ``[n, D]`` and non-negative share rows ``y`` ``[n, K]``."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        y = y / np.clip(y.sum(axis=1, keepdims=True), 1e-12, None)
        d, k = x.shape[1], y.shape[1]

        def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
            w = theta[: d * k].reshape(d, k)
            logp = log_softmax(x @ w + theta[d * k:], axis=1)
            loss = -(y * logp).sum() + 0.5 * self.alpha * (w * w).sum()
            g = np.exp(logp) - y  # [n, K]: d loss / d logits for rows summing to 1
            return float(loss), np.concatenate([(x.T @ g + self.alpha * w).ravel(), g.sum(axis=0)])

        theta0 = np.concatenate([np.zeros(d * k), np.log(np.clip(y.mean(axis=0), 1e-12, None))])
        res = minimize(objective, theta0, jac=True, method="L-BFGS-B",
                       options={"maxiter": self.max_iter, "gtol": self.tol})
        self.coef_ = res.x[: d * k].reshape(d, k)
        self.intercept_ = res.x[d * k:]
        self.n_iter_ = int(res.nit)
        return self

    def predict(self, x: Any) -> np.ndarray:
        """Predicted distributions ``[n, K]``."""
        check_is_fitted(self, "coef_")
        z = np.asarray(x, dtype=np.float64) @ self.coef_ + self.intercept_
        return np.exp(log_softmax(z, axis=1))


def mean_kl(y: np.ndarray, p: np.ndarray, eps: float = 1e-9) -> float:
    """Mean over rows of ``KL(y || p)`` with ``eps`` added inside the logarithm."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    return float((y * np.log((y + eps) / (p + eps))).sum(axis=1).mean())


#: Scorer for inner CV on share vectors (higher is better: negative mean KL).
neg_kl_scorer = make_scorer(mean_kl, greater_is_better=False)
