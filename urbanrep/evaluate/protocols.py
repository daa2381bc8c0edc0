"""Evaluation protocols: the configuration, the fold splits and the leak-free probe pipelines.

Two protocols are built in:

``"paper"``
    The published setting of the NYC-180 benchmark (MGFN, HREP, HAFusion, GURPP): ``Ridge(alpha=1)``
    on the raw embedding, ``KFold(10)`` without shuffling, negative predictions clipped to 0,
    metrics on the concatenated out-of-fold predictions; clustering
    ``KMeans(k, random_state=3, n_init=10)`` with ``k`` = 12 labels on NYC-180. Only the ridge probe is defined by the
    published protocol; the other probes (lasso, rf, mlp) run their ``strict`` pipelines inside
    the paper folds.

``"strict"`` (default)
    Shuffled ``KFold(5)`` repeated over several seeds; every preprocessing step and every
    hyper-parameter (the column scaling, :class:`FoldScaler`; the ridge/lasso alpha) is fit on the training fold only,
    inside one sklearn :class:`~sklearn.pipeline.Pipeline`; pooled out-of-fold metrics per
    repeat, reported as mean and standard deviation over the repeats.

Named peer protocols reproduce each published scorer of this benchmark exactly (read from the
peers' public ``tasks.py``): ``"hafusion"`` (HAFusion, ICDE 2024: ``Ridge(alpha=1)``, unshuffled
``KFold(10)``, negative predictions clipped to 0, pooled out-of-fold metrics; it publishes no
clustering, so ``KMeans(12, random_state=3, n_init=10)`` as its peers), ``"mgfn"`` (MGFN, IJCAI
2022: the same with unshuffled ``KFold(5)``; ``KMeans(12, random_state=3)``) and ``"mtgc"`` (MTGC:
as MGFN, ``KMeans(12, random_state=3, n_init=10)``). None of them shuffles, drops zero-valued
targets or scales the embedding. ``"paper"`` is the HAFusion setting. Every published protocol
runs once (no repeats), so it reports no standard deviation.

Optional spatial-block folds (``spatial_blocks=k``) group regions into ``k`` blocks by
``KMeans`` on their centroids (metric CRS) and split with ``GroupKFold``, so that no test region
has its block-mates in the training fold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.cluster import KMeans
from sklearn.compose import TransformedTargetRegressor
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LassoLarsCV, Ridge, RidgeCV
from sklearn.model_selection import GridSearchCV, GroupKFold, KFold
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from urbanrep.errors import ConfigError, UrbanRepError
from urbanrep.evaluate.softmax import SoftmaxRegression, neg_kl_scorer
from urbanrep.evaluate.split_ridge import SplitRidgeCV

PROTOCOLS: tuple[str, ...] = ("strict", "paper", "hafusion", "mgfn", "mtgc")
#: A column whose training-fold standard deviation is below this share of the widest column's is
#: rounding noise around a constant (:class:`FoldScaler`).
NOISE_SPREAD = 1e-12
#: Outer folds of each published protocol (all unshuffled ``KFold``).
PUBLISHED_FOLDS: dict[str, int] = {"paper": 10, "hafusion": 10, "mgfn": 5, "mtgc": 5}
#: Each protocol in words (the report and ``--help`` show them).
PROTOCOL_TEXT: dict[str, str] = {
    "strict": "shuffled {folds}-fold cross-validation repeated over {repeats} seeds; a StandardScaler and "
              "the ridge alpha (RidgeCV) are fit on the training folds only; negative predictions {clip}; "
              "R², MAE and RMSE on the pooled out-of-fold predictions of each repeat, mean and standard "
              "deviation over the repeats",
    "paper": "the published NYC-180 setting (HAFusion): Ridge(alpha=1) on the raw embedding, unshuffled "
             "{folds}-fold cross-validation, run once; negative predictions {clip}; R², MAE and RMSE on the "
             "pooled out-of-fold predictions",
    "hafusion": "HAFusion's scorer (ICDE 2024, tasks_NY): Ridge(alpha=1) on the raw embedding, unshuffled "
                "{folds}-fold cross-validation, run once; negative predictions {clip}; R², MAE and RMSE on the "
                "pooled out-of-fold predictions",
    "mgfn": "MGFN's scorer (IJCAI 2022, tasks.py): Ridge(alpha=1) on the raw embedding, unshuffled {folds}-fold "
            "cross-validation, run once; negative predictions {clip}; R², MAE and RMSE on the pooled "
            "out-of-fold predictions; KMeans(12, random_state=3) against the community districts",
    "mtgc": "MTGC's scorer (tasks.py): Ridge(alpha=1) on the raw embedding, unshuffled {folds}-fold "
            "cross-validation, run once; negative predictions {clip}; R², MAE and RMSE on the pooled "
            "out-of-fold predictions; KMeans(12, random_state=3, n_init=10) against the community districts",
}
REGRESSORS: tuple[str, ...] = ("ridge", "lasso", "rf", "mlp")
LANDUSE_MODELS: tuple[str, ...] = ("softmax", "ridge", "mlp")
#: Default ridge grid of the strict protocol (inner CV on the training fold).
DEFAULT_ALPHAS: tuple[float, ...] = tuple(float(a) for a in np.logspace(-3, 4, 30))
#: Default L2 grid of the strict softmax share probe (inner CV on the training fold).
DEFAULT_SOFTMAX_ALPHAS: tuple[float, ...] = tuple(float(a) for a in np.logspace(-2, 3, 6))


class EvaluationError(UrbanRepError):
    """Embeddings, targets or labels cannot be evaluated as given."""


@dataclass(frozen=True)
class EvalConfig:
    """How embeddings are evaluated; mirrors :func:`urbanrep.evaluate.evaluate_embeddings`.

    Attributes:
        protocol: ``"strict"`` (default), ``"paper"`` or a peer's published scorer,
            ``"hafusion"``, ``"mgfn"`` or ``"mtgc"`` (see the module docstring).
        regressors: Probes to run, from :data:`REGRESSORS`. The first one fills ``"tasks"`` in
            the report; every one of them appears under ``"probes"``.
        folds: Outer folds; ``None`` = protocol default (paper 10, strict 5).
        seeds: Repeats of the strict protocol (one shuffled split per seed; also seeds the
            rf/mlp probes and the strict clustering runs). The paper protocol runs once.
        spatial_blocks: If set, split by ``GroupKFold`` over this many spatial blocks
            (``KMeans`` on region centroids) instead of ``KFold``; the strict probes' inner
            searches (ridge alpha, lasso path, softmax penalty) then also split by blocks of
            the training fold (:func:`inner_cv_by_blocks`).
        ridge_alpha: Fixed ridge alpha. ``None`` = protocol default: paper 1.0, strict chosen
            by inner CV (``RidgeCV`` over ``alphas``, efficient leave-one-out on the training fold).
        alphas: Ridge alpha grid for the strict inner CV.
        inner_folds: Inner folds of the lasso probe (``LassoLarsCV`` on the training fold).
        clip_negative: Set negative predictions to 0. ``None`` = paper True, strict False.
        n_clusters: KMeans clusters; ``None`` = number of distinct labels held by at least two
            regions, per label column.
        cluster_seed: ``random_state`` of the single paper-protocol KMeans run.
        cluster_n_init: KMeans restarts.
        landuse_model: Share-vector probe: ``"softmax"`` (default; softmax regression on the
            share vectors, L2 penalty from ``softmax_alphas`` by inner CV in strict, 1.0 on the raw
            embedding in paper), ``"ridge"`` (ridge as for scalar targets, then clipped at 0 and
            renormalised) or ``"mlp"`` (likewise with the MLP).
        softmax_alphas: L2 grid of the strict softmax probe.
        kl_epsilon: Added to both distributions inside the KL divergence.
        rf_trees: Trees of the random-forest probe.
        mlp_hidden: Hidden width of the one-hidden-layer MLP probe.
        mlp_alpha: L2 penalty of the MLP probe.
        mlp_max_iter: Training iterations of the MLP probe.
        n_jobs: Parallel jobs for the random forest (the only parallel probe).
        repeat_jobs: Repeats of the strict protocol evaluated at the same time, in as many
            processes (``-1``: one per repeat; 1: in this process, one after the other). The
            numbers are the same for every value (each repeat is independent and seeded); on a
            machine with free cores the wall time falls nearly by that factor where probes are
            slow. 0 (default): automatic, as many as the cores the load average leaves free for
            the slow probes (land-use shares, MLP) on at least :data:`AUTO_PARALLEL_ROWS` regions,
            else 1 (worker processes cost more than they save on quick probes and small cities).
        tasks: Scalar targets and target groups to evaluate (e.g. ``("population",)``); ``None``
            evaluates every one the bundle has. Clustering is not affected.
        blas_threads: BLAS threads while evaluating (``threadpoolctl``); probes on a few hundred
            regions run much faster single-threaded. ``None`` leaves the setting alone.
        inputs: Also score the model's own inputs, one modality at a time, under the same
            protocol (:mod:`urbanrep.input_baselines`; the run folder's evaluation does it, where
            the region graph is at hand), so the report shows whether the embedding beats what it
            was built from on this city. Costs one more evaluation per modality.
    """

    protocol: str = "strict"
    regressors: tuple[str, ...] = ("ridge",)
    folds: int | None = None
    seeds: tuple[int, ...] = tuple(range(10))
    spatial_blocks: int | None = None
    tasks: tuple[str, ...] | None = None
    ridge_alpha: float | None = None
    alphas: tuple[float, ...] = DEFAULT_ALPHAS
    inner_folds: int = 5
    clip_negative: bool | None = None
    n_clusters: int | None = None
    cluster_seed: int = 3
    cluster_n_init: int = 10
    landuse_model: str = "softmax"
    softmax_alphas: tuple[float, ...] = DEFAULT_SOFTMAX_ALPHAS
    kl_epsilon: float = 1e-9
    rf_trees: int = 200
    mlp_hidden: int = 64
    mlp_alpha: float = 1e-3
    mlp_max_iter: int = 500
    n_jobs: int = 1
    repeat_jobs: int = 0
    blas_threads: int | None = 1
    inputs: bool = True

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"unknown evaluation protocol {self.protocol!r}; choose one of {', '.join(PROTOCOLS)}")
        if isinstance(self.regressors, str):
            object.__setattr__(self, "regressors", (self.regressors,))
        object.__setattr__(self, "regressors", tuple(self.regressors))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        object.__setattr__(self, "alphas", tuple(float(a) for a in self.alphas))
        if self.tasks is not None:
            tasks = (self.tasks,) if isinstance(self.tasks, str) else self.tasks
            object.__setattr__(self, "tasks", tuple(str(t) for t in tasks))
            if not self.tasks:
                raise ConfigError("EvalConfig.tasks must name at least one target (None evaluates all)")
        object.__setattr__(self, "softmax_alphas", tuple(float(a) for a in self.softmax_alphas))
        if not self.regressors:
            raise ConfigError(f"EvalConfig.regressors is empty; choose from {', '.join(REGRESSORS)}")
        bad = [r for r in self.regressors if r not in REGRESSORS]
        if bad:
            raise ConfigError(f"unknown regressor(s) {', '.join(bad)}; choose from {', '.join(REGRESSORS)}")
        if self.landuse_model not in LANDUSE_MODELS:
            raise ConfigError(f"unknown landuse_model {self.landuse_model!r}; choose from {', '.join(LANDUSE_MODELS)}")
        if self.repeat_jobs < -1:
            raise ConfigError(f"EvalConfig.repeat_jobs must be >= 1, 0 (automatic) or -1 (one per repeat), "
                              f"got {self.repeat_jobs}")
        if self.folds is not None and self.folds < 2:
            raise ConfigError(f"EvalConfig.folds must be >= 2, got {self.folds}")
        if self.protocol == "strict" and not self.seeds:
            raise ConfigError("the strict protocol needs at least one seed (EvalConfig.seeds)")
        if self.spatial_blocks is not None and self.spatial_blocks < self.n_folds:
            raise ConfigError(f"spatial_blocks={self.spatial_blocks} is fewer than folds={self.n_folds}; "
                              "use at least as many blocks as folds")
        if self.ridge_alpha is not None and self.ridge_alpha < 0:
            raise ConfigError(f"ridge_alpha must be >= 0, got {self.ridge_alpha}")
        if not self.alphas or min(self.alphas) <= 0 or not self.softmax_alphas or min(self.softmax_alphas) < 0:
            raise ConfigError("EvalConfig.alphas and softmax_alphas must be non-empty grids of positive values")

    @property
    def published(self) -> bool:
        """A published scorer (``paper`` or a peer's): bare ridge, unshuffled folds, one run."""
        return self.protocol in PUBLISHED_FOLDS

    @property
    def n_folds(self) -> int:
        """Outer folds after applying the protocol default."""
        if self.folds is not None:
            return self.folds
        return PUBLISHED_FOLDS.get(self.protocol, 5)

    @property
    def repeat_seeds(self) -> tuple[int, ...]:
        """One seed per repeat: the configured seeds (strict) or a single 0 (published protocols)."""
        return (0,) if self.published else self.seeds

    @property
    def clip(self) -> bool:
        """Whether negative predictions are set to 0."""
        return self.published if self.clip_negative is None else self.clip_negative

    def describe(self) -> str:
        """The protocol in words, with this configuration's folds, repeats and clipping."""
        text = PROTOCOL_TEXT[self.protocol].format(
            folds=self.n_folds, repeats=len(self.repeat_seeds),
            clip="are set to 0" if self.clip else "are kept")
        if self.spatial_blocks:
            text += f"; folds keep {self.spatial_blocks} spatial blocks (KMeans on centroids) together"
            if not self.published:
                text += ", and the inner search of each probe's penalty splits the training fold by blocks too"
        return text

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready view of the configuration (the report echoes it)."""
        return {
            "protocol": self.protocol, "regressors": list(self.regressors), "folds": self.n_folds,
            "seeds": list(self.repeat_seeds), "spatial_blocks": self.spatial_blocks,
            **({"tasks": list(self.tasks)} if self.tasks is not None else {}),
            "ridge_alpha": self.ridge_alpha, "alphas": [min(self.alphas), max(self.alphas), len(self.alphas)],
            "clip_negative": self.clip, "n_clusters": self.n_clusters, "cluster_seed": self.cluster_seed,
            "cluster_n_init": self.cluster_n_init, "landuse_model": self.landuse_model,
            "softmax_alphas": list(self.softmax_alphas),
            "kl_epsilon": self.kl_epsilon, "description": self.describe(),
        }


class FoldScaler(StandardScaler):
    """``StandardScaler`` that leaves a column unscaled where its training fold holds only rounding noise.

    A column that is non-zero in a few regions only (an eigenvector of a small graph component, a
    principal component of one outlying region) is, in a training fold without those regions, a
    constant plus floating-point noise (a standard deviation of about 1e-14). ``StandardScaler``
    treats a constant as unscaled, but not a constant plus noise: it divides by the noise, the test
    region's value becomes about 1e14 standard deviations, and the fold's predictions (and the R²
    pooled over every fold) become meaningless (R² of -1e22 seen on such a column). Here a column
    whose training standard deviation is below :data:`NOISE_SPREAD` times the largest column's is
    centred but not scaled, as a constant column is; the ridge then gives it no weight, since it
    does not vary in the training fold. Every other column is scaled exactly as ``StandardScaler``
    scales it.
    """

    def fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> FoldScaler:  # noqa: N803 (sklearn's name)
        """Fit as ``StandardScaler``, then set the scale of the rounding-noise columns to 1."""
        super().fit(X, y, sample_weight)
        if self.with_std and self.var_ is not None and np.size(self.var_):
            spread = np.sqrt(np.asarray(self.var_, dtype=np.float64))
            noise = spread < NOISE_SPREAD * float(spread.max())
            if noise.any():
                scale = np.asarray(self.scale_)  # type: ignore[has-type]  # set by StandardScaler.fit
                self.scale_ = np.where(noise, 1.0, scale).astype(scale.dtype)
        return self


def make_regressor(name: str, config: EvalConfig, seed: int) -> BaseEstimator:
    """A fresh, unfitted probe whose every fitted step sees the training fold only.

    Args:
        name: One of :data:`REGRESSORS`.
        config: Evaluation configuration.
        seed: Seed of this repeat (random forest, MLP initialisation).

    Returns:
        An sklearn estimator (a :class:`~sklearn.pipeline.Pipeline` except for the bare paper ridge).
    """
    if name == "ridge":
        if config.published:
            return Ridge(alpha=1.0 if config.ridge_alpha is None else config.ridge_alpha)
        if config.ridge_alpha is not None:
            return Pipeline([("scale", FoldScaler()), ("ridge", Ridge(alpha=config.ridge_alpha))])
        return Pipeline([("scale", FoldScaler()), ("ridge", RidgeCV(alphas=np.asarray(config.alphas)))])
    if name == "lasso":
        lasso = LassoLarsCV(cv=KFold(config.inner_folds, shuffle=True, random_state=seed))
        return Pipeline([("scale", FoldScaler()), ("lasso", lasso)])
    if name == "rf":
        return RandomForestRegressor(n_estimators=config.rf_trees, random_state=seed, n_jobs=config.n_jobs)
    if name == "mlp":
        mlp = MLPRegressor(hidden_layer_sizes=(config.mlp_hidden,), alpha=config.mlp_alpha,
                           max_iter=config.mlp_max_iter, random_state=seed)
        return Pipeline([("scale", FoldScaler()),
                         ("mlp", TransformedTargetRegressor(regressor=mlp, transformer=StandardScaler()))])
    raise ConfigError(f"unknown regressor {name!r}; choose from {', '.join(REGRESSORS)}")


def make_share_model(config: EvalConfig, seed: int) -> BaseEstimator:
    """A fresh multi-output probe for share vectors (land use), fit on training folds only.

    Its ``predict`` returns ``[n, K]`` scores; callers clip and renormalise them
    (:func:`urbanrep.evaluate.landuse.to_distribution`), a no-op for the softmax probe.
    """
    if config.landuse_model == "softmax":
        if config.published:
            return SoftmaxRegression(alpha=1.0 if config.ridge_alpha is None else config.ridge_alpha)
        pipe = Pipeline([("scale", FoldScaler()), ("softmax", SoftmaxRegression())])
        return GridSearchCV(pipe, {"softmax__alpha": list(config.softmax_alphas)}, scoring=neg_kl_scorer,
                            cv=KFold(config.inner_folds, shuffle=True, random_state=seed))
    if config.landuse_model == "mlp":
        mlp = MLPRegressor(hidden_layer_sizes=(config.mlp_hidden,), alpha=config.mlp_alpha,
                           max_iter=config.mlp_max_iter, random_state=seed)
        return Pipeline([("scale", FoldScaler()), ("mlp", mlp)])
    return make_regressor("ridge", config, seed)


def inner_cv_by_blocks(estimator: BaseEstimator, groups: np.ndarray, config: EvalConfig, seed: int) -> BaseEstimator:
    """``estimator`` with its inner hyper-parameter search keeping spatial blocks together.

    Under spatial-block outer folds a test region has no neighbour in its training fold, so the
    probe's own choice of penalty must be made the same way: leave-one-out or shuffled inner
    folds keep each held-out region's neighbours in training, reward interpolation between
    them and choose too little regularisation for areas without labelled neighbours. The ridge
    alpha (``RidgeCV``), the lasso path (``LassoLarsCV``) and the softmax penalty
    (``GridSearchCV``) are then chosen by ``GroupKFold`` over the training fold's blocks
    (``config.inner_folds`` splits, fewer when the fold holds fewer blocks); the ridge alpha by
    the mean squared error of the held-out blocks, as ``RidgeCV``'s leave-one-out path scores it
    (a per-fold R² is unstable on folds of a few regions), with :class:`SplitRidgeCV` in place
    of ``RidgeCV``. Probes without an
    inner search are returned as they are.

    Args:
        estimator: A fresh probe from :func:`make_regressor` or :func:`make_share_model`.
        groups: ``[n_train]`` spatial block ids of the training fold's rows.
        config: Evaluation configuration.
        seed: Seed of this repeat (shuffles the blocks among inner folds).

    Returns:
        The same estimator, its inner ``cv`` set to the block splits.
    """
    k = min(config.inner_folds, len(np.unique(groups)))
    if k < 2:
        raise EvaluationError(f"a training fold holds {k} spatial block: too few for an inner search; "
                              "raise EvalConfig.spatial_blocks")
    splits = list(GroupKFold(n_splits=k, shuffle=True, random_state=seed).split(groups, groups=groups))
    if isinstance(estimator, Pipeline):
        for i, (name, step) in enumerate(estimator.steps):
            if isinstance(step, RidgeCV):
                estimator.steps[i] = (name, SplitRidgeCV(alphas=tuple(np.ravel(step.alphas)), cv=splits))
            elif isinstance(step, LassoLarsCV):
                step.set_params(cv=splits)
    if isinstance(estimator, GridSearchCV):
        estimator.set_params(cv=splits)
    return estimator


def fold_probe(proto: BaseEstimator, config: EvalConfig, seed: int, groups: np.ndarray | None) -> BaseEstimator:
    """A fresh copy of ``proto`` for one outer training fold.

    Args:
        proto: The repeat's probe (:func:`make_regressor` or :func:`make_share_model`).
        config: Evaluation configuration.
        seed: Seed of this repeat.
        groups: ``[n_train]`` spatial block ids of the fold's rows under spatial-block folds
            (its inner search then splits by blocks, :func:`inner_cv_by_blocks`), else None.
    """
    return clone(proto) if groups is None else inner_cv_by_blocks(clone(proto), groups, config, seed)


def spatial_groups(centroids: np.ndarray, n_blocks: int, seed: int) -> np.ndarray:
    """Spatial block id per region from ``KMeans`` on centroids.

    Args:
        centroids: ``[N, 2]`` region centroids in a metric CRS.
        n_blocks: Number of blocks ``k``.
        seed: KMeans ``random_state``.

    Returns:
        ``[N]`` int block ids in ``0..k-1``.
    """
    if len(centroids) < n_blocks:
        raise EvaluationError(f"cannot form {n_blocks} spatial blocks from {len(centroids)} regions; "
                              "lower EvalConfig.spatial_blocks")
    return KMeans(n_blocks, random_state=seed, n_init=10).fit_predict(centroids).astype(np.int64)


def outer_splits(n: int, config: EvalConfig, seed: int,
                 groups: np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Outer ``(train, test)`` index pairs for one repeat.

    Args:
        n: Number of rows (regions with an observed value).
        config: Evaluation configuration.
        seed: Seed of this repeat (ignored by the unshuffled paper split).
        groups: ``[n]`` spatial block ids, for spatial-block folds.

    Returns:
        ``config.n_folds`` pairs of int index arrays; the test parts partition ``range(n)``.
    """
    k = config.n_folds
    if n < 2 * k:
        raise EvaluationError(f"only {n} regions have a value: too few for {k}-fold evaluation "
                              "(need at least 2 per fold); lower EvalConfig.folds")
    idx = np.arange(n)
    if groups is not None:
        if len(np.unique(groups)) < k:
            raise EvaluationError(f"the regions with a value fall into {len(np.unique(groups))} spatial blocks, "
                                  f"fewer than {k} folds; raise EvalConfig.spatial_blocks or lower folds")
        if config.published:
            splitter = GroupKFold(n_splits=k)
        else:
            splitter = GroupKFold(n_splits=k, shuffle=True, random_state=seed)
        return [(tr, te) for tr, te in splitter.split(idx, groups=groups)]
    if config.published:
        return [(tr, te) for tr, te in KFold(k).split(idx)]
    return [(tr, te) for tr, te in KFold(k, shuffle=True, random_state=seed).split(idx)]
