"""Clustering probe: KMeans on the raw embedding against categorical region labels."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from urbanrep.evaluate.protocols import EvalConfig, EvaluationError


def cluster_scores(x: np.ndarray, labels: np.ndarray, config: EvalConfig) -> dict[str, Any]:
    """NMI and ARI of ``KMeans`` clusters of the embedding against ground-truth labels.

    The paper protocol runs ``KMeans(k, random_state=config.cluster_seed, n_init=config.cluster_n_init)``
    once; the strict protocol runs it once per seed and reports mean and std. ``k`` is
    ``config.n_clusters`` or else the number of distinct labels held by at least two regions (a
    label of a single region cannot form a cluster of its own: NYC-180's ``mh_cd.json`` has 13
    values, one of them on a single region, and the published setting is ``KMeans(12)``). Labels
    are never used to fit anything; all labelled regions are scored.

    Args:
        x: ``[n, D]`` embeddings of the regions that have a label.
        labels: ``[n]`` labels (any hashable type).
        config: Evaluation configuration.

    Returns:
        ``{"nmi", "ari", "nmi_std", "ari_std", "n_clusters", "repeats", "n"}``.
    """
    _, counts = np.unique(labels, return_counts=True)
    k = config.n_clusters or int((counts >= 2).sum())
    if k < 2:
        raise EvaluationError(f"labels form {k} group(s) of two or more regions: nothing to cluster; "
                              "set EvalConfig.n_clusters or check the labels")
    if len(labels) <= k:
        raise EvaluationError(f"{len(labels)} labelled regions cannot form {k} clusters; set EvalConfig.n_clusters lower")
    seeds = (config.cluster_seed,) if config.published else config.seeds
    nmi, ari = [], []
    for seed in seeds:
        pred = KMeans(k, random_state=seed, n_init=config.cluster_n_init).fit_predict(x)
        nmi.append(normalized_mutual_info_score(labels, pred))
        ari.append(adjusted_rand_score(labels, pred))
    return {"nmi": float(np.mean(nmi)), "ari": float(np.mean(ari)), "nmi_std": float(np.std(nmi)),
            "ari_std": float(np.std(ari)), "n_clusters": int(k), "repeats": len(seeds), "n": int(len(labels))}
