"""The model's own inputs as reference rows of an evaluation: does the embedding beat them here?

A region embedding earns its keep on a city only if a probe predicts the city's targets better
from it than from the per-region features the model was given. :func:`input_tables` takes those
features from the region graph, one table per aggregated modality, exactly as the experts read
them (count columns as ``log1p`` counts, the other columns as the converters wrote them; a region
without the modality has zeros there); :func:`score_inputs` puts each through the same evaluation
as the embedding (same protocol, folds, seeds and probes) and keeps the headline figures.
Nothing here sees a target except through the evaluation's own training folds.

Shapes: each table ``[N, F_m]``, indexed by ``region_id`` in graph node order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
from torch_geometric.data import HeteroData

from urbanrep.bundle import CityBundle
from urbanrep.evaluate import EvalConfig, run_evaluation
from urbanrep.graphs.schema import AGGREGATED_MODALITIES, REGION, feature_key

#: Figures kept per scored input: per scalar task, per share group, and of the clustering.
TASK_KEYS, SHARE_KEYS, CLUSTER_KEYS = ("r2", "r2_std"), ("l1", "kl", "cosine"), ("nmi", "ari")


def input_tables(data: HeteroData, modalities: Sequence[str] | None = None) -> dict[str, pd.DataFrame]:
    """Each aggregated modality's region features from the graph, as an embedding-like table.

    Args:
        data: Region graph (``region_ids``, ``feature_names`` when known).
        modalities: Modalities to take (None: every aggregated modality of the graph); those the
            graph lacks are left out.

    Returns:
        ``{modality: [N, F] table}`` in the graph's modality order, indexed by ``region_id``.
    """
    names = getattr(data, "feature_names", {}) or {}
    wanted = list(data.modalities) if modalities is None else [m for m in data.modalities if m in modalities]
    out: dict[str, pd.DataFrame] = {}
    for m in wanted:
        key = feature_key(m) if m in AGGREGATED_MODALITIES else None
        if key is None or key not in data[REGION]:
            continue
        x = data[REGION][key].detach().float().cpu().numpy()
        cols = list(names.get(m, []))
        if len(cols) != x.shape[1]:
            cols = [f"{m}_{i:03d}" for i in range(x.shape[1])]
        out[m] = pd.DataFrame(x, columns=cols, index=pd.Index(list(data.region_ids), name="region_id"))
    return out


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    keep: dict[str, Any] = {}
    tasks = {t: {k: v[k] for k in TASK_KEYS if k in v} for t, v in (metrics.get("tasks") or {}).items()}
    shares = {g: {k: v[k] for k in SHARE_KEYS if k in v} for g, v in (metrics.get("landuse") or {}).items()}
    clus = {k: metrics["clustering"][k] for k in CLUSTER_KEYS if k in (metrics.get("clustering") or {})}
    for name, part in (("tasks", tasks), ("landuse", shares), ("clustering", clus)):
        if part:
            keep[name] = part
    return keep


def score_inputs(tables: dict[str, pd.DataFrame], bundle: CityBundle, config: EvalConfig) -> dict[str, Any]:
    """Every table of :func:`input_tables` through the embedding's evaluation.

    Args:
        tables: ``{modality: table}``.
        bundle: The city bundle with the targets and labels.
        config: The embedding's evaluation configuration.

    Returns:
        ``{modality: {"tasks": {task: {"r2", "r2_std"}}, "landuse": {group: {"l1", "kl",
        "cosine"}}, "clustering": {"nmi", "ari"}}}`` (parts without figures left out).
    """
    out: dict[str, Any] = {}
    for m, table in tables.items():
        out[m] = _headline(run_evaluation(table, bundle, config, stage=f"evaluation of the {m} inputs").metrics)
    return out
