"""Downstream evaluation of region embeddings: protocols, probes, baselines and reports.

Typical use::

    from urbanrep.evaluate import EvalConfig, evaluate_embeddings, published_embedding
    report = evaluate_embeddings(emb, bundle, EvalConfig(protocol="strict"))
"""

from urbanrep.evaluate.baselines import (
    BASELINES,
    PUBLISHED_EMBEDDINGS,
    available_baselines,
    baseline_embedding,
    modality_features,
    published_embedding,
    raw_feature_baseline,
    raw_modality_baseline,
)
from urbanrep.evaluate.clustering import cluster_scores
from urbanrep.evaluate.harness import (
    PREDICTION_COLUMNS,
    EvalResult,
    align_embeddings,
    evaluate_embeddings,
    oof_predictions,
    run_evaluation,
)
from urbanrep.evaluate.landuse import distribution_scores, share_metrics, to_distribution
from urbanrep.evaluate.protocols import PROTOCOLS, REGRESSORS, EvalConfig, EvaluationError
from urbanrep.evaluate.regression import regression_metrics
from urbanrep.evaluate.report import compare_embeddings, format_markdown, summary_table, write_report

__all__ = [
    "BASELINES",
    "PREDICTION_COLUMNS",
    "PROTOCOLS",
    "PUBLISHED_EMBEDDINGS",
    "REGRESSORS",
    "EvalConfig",
    "EvalResult",
    "EvaluationError",
    "align_embeddings",
    "available_baselines",
    "baseline_embedding",
    "cluster_scores",
    "compare_embeddings",
    "distribution_scores",
    "evaluate_embeddings",
    "format_markdown",
    "modality_features",
    "oof_predictions",
    "published_embedding",
    "raw_feature_baseline",
    "raw_modality_baseline",
    "regression_metrics",
    "run_evaluation",
    "share_metrics",
    "summary_table",
    "to_distribution",
    "write_report",
]
