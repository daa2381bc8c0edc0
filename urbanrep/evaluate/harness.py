"""Evaluate a region embedding table against a city bundle's targets and labels."""

from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from urbanrep.bundle import CityBundle
from urbanrep.cores import cores_and_load
from urbanrep.evaluate.clustering import cluster_scores
from urbanrep.evaluate.landuse import share_metrics, share_oof_predictions, share_rows
from urbanrep.evaluate.protocols import EvalConfig, EvaluationError, spatial_groups
from urbanrep.evaluate.regression import oof_predictions_array, regression_metrics
from urbanrep.progress import StepLog

log = logging.getLogger(__name__)

PREDICTION_COLUMNS = ("region_id", "target", "group", "probe", "observed", "predicted", "predicted_std")


@dataclass
class EvalResult:
    """Metrics report plus the out-of-fold predictions behind it.

    Attributes:
        metrics: The JSON-ready report of :func:`evaluate_embeddings`.
        predictions: Long table with :data:`PREDICTION_COLUMNS`: one row per region, target and
            probe; ``predicted`` is the mean over repeats (each repeat predicts every region
            exactly once, out of fold) and ``predicted_std`` its spread.
    """

    metrics: dict[str, Any]
    predictions: pd.DataFrame


def align_embeddings(emb: pd.DataFrame, region_ids: pd.Index) -> np.ndarray:
    """Rows of ``emb`` in bundle order, as a float array.

    Args:
        emb: Embedding table indexed by ``region_id`` (or with a ``region_id`` column), numeric columns.
        region_ids: Bundle region order.

    Returns:
        ``[N, D]`` float64 array, row ``i`` = region ``region_ids[i]``.

    Raises:
        EvaluationError: A bundle region has no row, ids repeat, or values are non-numeric or non-finite.
    """
    if "region_id" in emb.columns:
        emb = emb.set_index("region_id")
    if not emb.index.is_unique:
        dup = emb.index[emb.index.duplicated()].unique()[:5].tolist()
        raise EvaluationError(f"embedding table repeats region ids (e.g. {dup}); keep one row per region")
    missing = region_ids.difference(emb.index)
    if len(missing):
        raise EvaluationError(
            f"embedding table lacks {len(missing)} of the bundle's {len(region_ids)} regions (e.g. "
            f"{missing[:5].tolist()}); index it by the bundle's region_id (index dtype {emb.index.dtype}, "
            f"bundle dtype {region_ids.dtype})")
    extra = emb.index.difference(region_ids)
    if len(extra):
        log.warning("embedding table has %d regions not in the bundle; they are ignored", len(extra))
    try:
        x = emb.reindex(region_ids).to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise EvaluationError(f"embedding columns must be numeric ({exc}); drop non-numeric columns") from exc
    if x.ndim != 2 or x.shape[1] == 0:
        raise EvaluationError("embedding table has no value columns")
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise EvaluationError(f"{int(bad.sum())} embedding rows hold NaN or inf (e.g. region "
                              f"{region_ids[np.flatnonzero(bad)[0]]!r}); fix or drop them before evaluating")
    return x


def region_centroids(bundle: CityBundle) -> np.ndarray:
    """Region centroids ``[N, 2]`` in a metric CRS (the UTM zone of the regions when geographic)."""
    regions = bundle.regions
    if regions.crs is None:
        log.warning("bundle %s has no CRS; spatial blocks use raw coordinates", bundle.name)
    elif regions.crs.is_geographic:
        regions = regions.to_crs(regions.estimate_utm_crs())
    c = regions.geometry.centroid
    return np.column_stack([c.x.to_numpy(), c.y.to_numpy()])


def _prediction_frame(ids: pd.Index, target: str, group: str, probe: str, observed: np.ndarray,
                      preds: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"region_id": ids, "target": target, "group": group, "probe": probe,
                         "observed": observed, "predicted": preds.mean(axis=0), "predicted_std": preds.std(axis=0)})


def run_evaluation(emb: pd.DataFrame, bundle: CityBundle, config: EvalConfig | None = None, *,
                   clustering: bool = True, stage: str = "evaluation") -> EvalResult:
    """Evaluate an embedding: scalar regression, share-vector prediction and clustering.

    Every bundle target not in a target group is a scalar regression task; every target group
    (e.g. ``"landuse_shares"``) is predicted as a distribution; every label column is a
    clustering task. Regions without a value are left out of that task only. Nothing computed
    from a target enters the features, and every fitted step sees training folds only.

    Args:
        emb: Embedding table indexed by ``region_id``, ``[N, D]`` numeric columns.
        bundle: City bundle holding targets and labels.
        config: Evaluation configuration (default :class:`EvalConfig()`).
        clustering: Run the clustering probe.
        stage: Name of the progress bar and of the progress lines (one outer fold of one repeat of
            a task is a step; a line at least every 10 s once the evaluation has run that long,
            with an ETA).

    Returns:
        :class:`EvalResult` with the report and the out-of-fold predictions.
    """
    config = config or EvalConfig()
    if config.blas_threads is None:
        return _run(emb, bundle, config, clustering, stage)
    with threadpool_limits(limits=config.blas_threads):
        return _run(emb, bundle, config, clustering, stage)


def _run(emb: pd.DataFrame, bundle: CityBundle, config: EvalConfig, clustering: bool, stage: str) -> EvalResult:
    ids = bundle.region_ids
    x = align_embeddings(emb, ids)
    targets = bundle.target_table()
    grouped = {m for members in bundle.target_groups.values() for m in members}
    scalar = [t for t in targets.columns if t not in grouped]
    target_groups = dict(bundle.target_groups)
    if config.tasks is not None:
        unknown = sorted(set(config.tasks) - set(scalar) - set(target_groups))
        if unknown:
            raise EvaluationError(f"EvalConfig.tasks names {unknown}, which the bundle does not have; choose from "
                                  f"{sorted(scalar) + sorted(target_groups)}")
        scalar = [t for t in scalar if t in config.tasks]
        target_groups = {g: m for g, m in target_groups.items() if g in config.tasks}

    groups_all: list[np.ndarray] | None = None
    if config.spatial_blocks is not None:
        cents = region_centroids(bundle)
        groups_all = [spatial_groups(cents, config.spatial_blocks, s) for s in config.repeat_seeds]

    def groups_for(mask: np.ndarray) -> list[np.ndarray] | None:
        return None if groups_all is None else [g[mask] for g in groups_all]

    report: dict[str, Any] = {"protocol": config.protocol, "regressor": config.regressors[0],
                              "config": config.as_dict(), "tasks": {}, "probes": {r: {} for r in config.regressors},
                              "clustering": {}, "landuse": {}, "n_regions": {"total": len(ids)}, "skipped": {}}
    frames: list[pd.DataFrame] = []

    labels = bundle.label_table() if clustering else None
    folds = len(config.repeat_seeds) * config.n_folds  # fewer where spatial blocks allow fewer folds
    steps = (len(scalar) * len(config.regressors) + len(target_groups)) * folds + (
        len(labels.columns) if labels is not None else 0)
    parallel = config.repeat_jobs in (0, 1) and len(config.repeat_seeds) > 1 and cores_and_load()[0] > 1
    hint = "evaluate.repeat_jobs=N evaluates N repeats at once (the same numbers)" if parallel else ""
    with contextlib.closing(StepLog(stage, steps, log, hint=hint)) as progress:
        for target in scalar:
            y_all = targets[target].to_numpy(dtype=np.float64)
            mask = np.isfinite(y_all)
            report["n_regions"][target] = int(mask.sum())
            for reg in config.regressors:
                try:
                    preds = oof_predictions_array(
                        x[mask], y_all[mask], config, reg, groups_for(mask),
                        on_fold=functools.partial(progress.step, f"{target}, {reg}"))
                except EvaluationError as exc:
                    log.warning("target %s skipped: %s", target, exc)
                    report["skipped"][target] = str(exc)
                    break
                report["probes"][reg][target] = regression_metrics(y_all[mask], preds)
                frames.append(_prediction_frame(ids[mask], target, target, reg, y_all[mask], preds))
            if target in report["probes"][config.regressors[0]]:
                report["tasks"][target] = report["probes"][config.regressors[0]][target]

        for group, members in target_groups.items():
            absent = [m for m in members if m not in targets.columns]
            if absent:
                raise EvaluationError(f"target group {group!r} names targets {absent} that the bundle lacks; "
                                      "fix target_groups in the bundle manifest")
            table = targets[members].to_numpy(dtype=np.float64)
            mask = share_rows(table)
            report["n_regions"][group] = int(mask.sum())
            y = table[mask] / table[mask].sum(axis=1, keepdims=True)
            try:
                preds = share_oof_predictions(x[mask], y, config, groups_for(mask),
                                              on_fold=functools.partial(progress.step, group))
            except EvaluationError as exc:
                log.warning("target group %s skipped: %s", group, exc)
                report["skipped"][group] = str(exc)
                continue
            report["landuse"][group] = share_metrics(y, preds, config.kl_epsilon)
            for j, member in enumerate(members):
                frames.append(_prediction_frame(ids[mask], member, group, f"{config.landuse_model}_shares",
                                                y[:, j], preds[:, :, j]))

        if labels is not None:
            by_label: dict[str, Any] = {}
            for col in labels.columns:
                lab = labels[col]
                mask = lab.notna().to_numpy()
                report["n_regions"][col] = int(mask.sum())
                try:
                    by_label[col] = cluster_scores(x[mask], lab.to_numpy()[mask].astype(str), config)
                except EvaluationError as exc:
                    log.warning("label %s skipped: %s", col, exc)
                    report["skipped"][col] = str(exc)
                progress.step(f"clustering {col}")
            if by_label:
                first = next(iter(by_label))
                report["clustering"] = {"nmi": by_label[first]["nmi"], "ari": by_label[first]["ari"],
                                        "label": first, "by_label": by_label}

    predictions = (pd.concat(frames, ignore_index=True) if frames
                   else pd.DataFrame(columns=list(PREDICTION_COLUMNS)))
    return EvalResult(metrics=report, predictions=predictions)


def evaluate_embeddings(emb: pd.DataFrame, bundle: CityBundle, config: EvalConfig | None = None) -> dict[str, Any]:
    """Evaluate an embedding table on a bundle's targets and labels.

    Args:
        emb: Embedding table indexed by ``region_id`` with ``D`` float columns.
        bundle: City bundle with targets (and optionally labels, target groups).
        config: Evaluation configuration (default: strict protocol, ridge probe).

    Returns:
        A JSON-ready dict::

            {"protocol": ..., "regressor": ..., "config": {...},
             "tasks": {"<target>": {"mae", "rmse", "r2", "mae_std", "rmse_std", "r2_std", "repeats", "n"}},
             "probes": {"<regressor>": {"<target>": {...}}},
             "clustering": {"nmi", "ari", "label", "by_label": {"<label>": {...}}},
             "landuse": {"<group>": {"l1", "kl", "cosine", ...}},
             "n_regions": {"total": N, "<target or label or group>": n}, "skipped": {...}}
    """
    return run_evaluation(emb, bundle, config).metrics


def oof_predictions(emb: pd.DataFrame, bundle: CityBundle, config: EvalConfig | None = None) -> pd.DataFrame:
    """Out-of-fold predictions per target for export and plots.

    Args:
        emb: Embedding table indexed by ``region_id``.
        bundle: City bundle with targets.
        config: Evaluation configuration.

    Returns:
        Long table with columns ``region_id, target, group, probe, observed, predicted,
        predicted_std`` (see :class:`EvalResult`).
    """
    return run_evaluation(emb, bundle, config, clustering=False).predictions
