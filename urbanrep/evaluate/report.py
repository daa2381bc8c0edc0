"""Comparing several embeddings: one report per embedding, a summary table, atomic JSON output."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from urbanrep.atomic import write_text_atomic
from urbanrep.bundle import CityBundle
from urbanrep.evaluate.harness import evaluate_embeddings
from urbanrep.evaluate.protocols import EvalConfig


def compare_embeddings(embeddings: Mapping[str, pd.DataFrame], bundle: CityBundle,
                       config: EvalConfig | None = None) -> dict[str, dict[str, Any]]:
    """Evaluate several embedding tables with one configuration.

    Args:
        embeddings: Name -> embedding table indexed by ``region_id``.
        bundle: City bundle with targets and labels.
        config: Evaluation configuration shared by all.

    Returns:
        Name -> report of :func:`~urbanrep.evaluate.harness.evaluate_embeddings`.
    """
    return {name: evaluate_embeddings(emb, bundle, config) for name, emb in embeddings.items()}


def summary_table(results: Mapping[str, dict[str, Any]], metric: str = "r2") -> pd.DataFrame:
    """One row per embedding: ``metric`` per scalar task (``±`` std when repeated), NMI/ARI, share L1.

    Args:
        results: Name -> report.
        metric: ``"r2"``, ``"mae"`` or ``"rmse"``.

    Returns:
        Table of strings indexed by embedding name.
    """
    rows: dict[str, dict[str, str]] = {}
    for name, rep in results.items():
        row: dict[str, str] = {}
        for task, m in rep.get("tasks", {}).items():
            std = m.get(f"{metric}_std", 0.0)
            row[task] = f"{m[metric]:.3f}" + (f" ± {std:.3f}" if m.get("repeats", 1) > 1 else "")
        clu = rep.get("clustering") or {}
        if clu:
            row["nmi"] = f"{clu['nmi']:.3f}"
            row["ari"] = f"{clu['ari']:.3f}"
        for group, m in rep.get("landuse", {}).items():
            row[f"{group}_l1"] = f"{m['l1']:.3f}"
            row[f"{group}_cosine"] = f"{m['cosine']:.3f}"
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index").fillna("")


def format_markdown(results: Mapping[str, dict[str, Any]], metric: str = "r2") -> str:
    """:func:`summary_table` as a Markdown table (first line names the protocol)."""
    table = summary_table(results, metric)
    protocols = sorted({r.get("protocol", "?") for r in results.values()})
    head = ["embedding", *table.columns]
    lines = [f"protocol: {', '.join(protocols)}; metric: {metric}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join([str(name), *row.tolist()]) + " |" for name, row in table.iterrows()]
    return "\n".join(lines) + "\n"


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "item"):
        return _json_safe(obj.item())
    return obj


def write_report(results: dict[str, Any], path: str | Path) -> Path:
    """Write a report (or a name -> report mapping) as JSON, atomically; NaN/inf become ``null``."""
    path = Path(path)
    write_text_atomic(path, json.dumps(_json_safe(results), indent=2, allow_nan=False) + "\n")
    return path


def input_rows(metrics: dict[str, Any]) -> list[tuple[str, float, list[float | None], bool]]:
    """``(figure, embedding's value, each input's value, whether the embedding is at least as good)``
    for every task R², share-prediction L1 (lower is better) and clustering NMI both were scored on."""
    inputs = metrics.get("inputs") or {}
    rows: list[tuple[str, float, list[float | None], bool]] = []

    def add(label: str, own: float | None, values: list[float | None], lower: bool = False) -> None:
        got = [v for v in values if v is not None]
        if own is None or not got:
            return
        better = own <= min(got) if lower else own >= max(got)
        rows.append((label, float(own), values, better))

    for task, vals in (metrics.get("tasks") or {}).items():
        add(f"{task} R2", vals.get("r2"), [(i.get("tasks") or {}).get(task, {}).get("r2") for i in inputs.values()])
    for group, vals in (metrics.get("landuse") or {}).items():
        add(f"{group} L1", vals.get("l1"), [(i.get("landuse") or {}).get(group, {}).get("l1")
                                           for i in inputs.values()], lower=True)
    clus = metrics.get("clustering") or {}
    if clus.get("nmi") is not None:
        add("clustering NMI", clus["nmi"], [(i.get("clustering") or {}).get("nmi") for i in inputs.values()])
    return rows
