"""What the peer models read from a region graph: raw count views, the OD matrix, similarities.

The peers were published on raw matrices (POI counts per category, land-use counts, OD trip
counts). Our region graph keeps those in recoverable form: ``log1p:<name>`` count columns,
``share:<name>`` columns with a ``log1p:total``, and the OD flows as ``(region, mobility,
region)`` edges (off-diagonal) plus the ``log1p:intra_flow`` feature (diagonal). This module
turns them back into dense arrays in region (node) order, so every peer sees the same data as
our model, whatever subset of modalities the city has.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

log = logging.getLogger("experiments.peers")

MOBILITY_EDGE = ("region", "mobility", "region")
ADJACENT_EDGE = ("region", "adjacent", "region")


@dataclass(frozen=True)
class CountView:
    """Per-region counts of one aggregated modality.

    Attributes:
        counts: float64 ``[N, C]`` non-negative counts (or shares when the graph kept no totals).
        mask: bool ``[N]``, True where the region has data for the modality.
        names: ``C`` category names.
    """

    counts: np.ndarray
    mask: np.ndarray
    names: list[str]


def as_graph(data_or_bundle: Any) -> Any:
    """The region graph of ``data_or_bundle`` (built with the default ``GraphConfig`` from a bundle)."""
    from urbanrep.bundle import CityBundle

    if isinstance(data_or_bundle, CityBundle):
        from urbanrep.graphs import GraphConfig, build_graph

        data, _ = build_graph(data_or_bundle, GraphConfig())
        return data
    if not hasattr(data_or_bundle, "region_ids") or not hasattr(data_or_bundle, "modalities"):
        raise TypeError(f"expected a region graph (HeteroData from urbanrep.graphs.build_graph) or a CityBundle, "
                        f"got {type(data_or_bundle).__name__}")
    return data_or_bundle


def _region_store(data: Any) -> Any:
    return data["region"]


def num_regions(data: Any) -> int:
    """``N``, the number of region nodes."""
    return len(data.region_ids)


def count_view(data: Any, modality: str) -> CountView | None:
    """Raw per-category counts of ``modality`` recovered from the graph features (None when absent).

    ``log1p:<name>`` columns give counts by ``expm1``; without them, ``share:<name>`` columns times
    ``expm1(log1p:total)`` give counts, or the shares themselves when no total is kept.
    """
    if modality not in data.modalities:
        return None
    reg = _region_store(data)
    x = getattr(reg, f"x_{modality}").detach().cpu().numpy().astype(np.float64)
    mask = getattr(reg, f"mask_{modality}").detach().cpu().numpy().astype(bool)
    names = list(data.feature_names[modality])
    logs = [i for i, c in enumerate(names) if c.startswith("log1p:") and c != "log1p:total"]
    shares = [i for i, c in enumerate(names) if c.startswith("share:")]
    if logs and (not shares or len(logs) == len(shares)):
        counts = np.expm1(x[:, logs])
        cols = [names[i][len("log1p:"):] for i in logs]
    elif shares:
        counts = x[:, shares]
        cols = [names[i][len("share:"):] for i in shares]
        if "log1p:total" in names:
            counts = counts * np.expm1(x[:, names.index("log1p:total")])[:, None]
    else:
        return None
    counts = np.clip(counts, 0.0, None)
    counts[~mask] = 0.0
    return CountView(counts=counts, mask=mask, names=cols)


def od_matrix(data: Any) -> np.ndarray | None:
    """Dense OD trip counts ``[N, N]`` (row = origin), diagonal from the intra-region trips; None without mobility.

    With per-slice ``edge_attr`` the matrix is still the total (``edge_weight``).
    """
    if "mobility" not in data.modalities or MOBILITY_EDGE not in data.edge_types:
        return None
    n = num_regions(data)
    store = data[MOBILITY_EDGE]
    ei = store.edge_index.detach().cpu().numpy()
    w = store.edge_weight.detach().cpu().numpy().astype(np.float64)
    od = np.zeros((n, n), dtype=np.float64)
    np.add.at(od, (ei[0], ei[1]), w)
    names = list(data.feature_names.get("mobility", []))
    if "log1p:intra_flow" in names:
        x = _region_store(data).x_mobility.detach().cpu().numpy().astype(np.float64)
        od[np.arange(n), np.arange(n)] = np.expm1(x[:, names.index("log1p:intra_flow")])
    return od


def adjacency_lists(data: Any) -> list[np.ndarray]:
    """Spatial neighbours of every region (``(region, adjacent, region)`` edges, self loops dropped)."""
    n = num_regions(data)
    ei = data[ADJACENT_EDGE].edge_index.detach().cpu().numpy()
    keep = ei[0] != ei[1]
    src, dst = ei[0][keep], ei[1][keep]
    order = np.lexsort((dst, src))
    src, dst = src[order], dst[order]
    bounds = np.searchsorted(src, np.arange(n + 1))
    return [np.unique(dst[bounds[i]:bounds[i + 1]]) for i in range(n)]


def knn_similarity_edges(sim: np.ndarray, k: int, mask: np.ndarray | None = None) -> np.ndarray:
    """Symmetric graph linking every region with its ``k`` most similar regions (self loops kept).

    Args:
        sim: ``[N, N]`` similarity.
        k: Neighbours per region (ties broken by region order, stable).
        mask: Regions with data; the others get only their self loop.

    Returns:
        int64 ``[2, E]`` edge index, both directions, unique pairs.
    """
    n = sim.shape[0]
    k = min(k, n)
    ok = np.ones(n, dtype=bool) if mask is None else mask
    s = np.where(np.outer(ok, ok), sim, -np.inf)
    np.fill_diagonal(s, np.inf)
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    src = np.repeat(np.arange(n), k)
    dst = top.ravel()
    keep = np.isfinite(s[src, dst]) | (src == dst)
    src, dst = src[keep], dst[keep]
    pairs = np.unique(np.concatenate([np.stack([src, dst]), np.stack([dst, src])], axis=1), axis=1)
    return np.asarray(pairs, dtype=np.int64)


def cosine_similarity(x: np.ndarray) -> np.ndarray:
    """Row cosine similarity ``[N, N]``; rows of zeros have similarity 0 to everything (1 to themselves)."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    y = np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)
    sim = y @ y.T
    np.fill_diagonal(sim, 1.0)
    return sim


def seed_all(seed: int) -> np.random.Generator:
    """Seed torch for one deterministic CPU run; returns the numpy generator the run must use."""
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def log_progress(logger: logging.Logger, peer: str, epoch: int, epochs: int, loss: float, started: float) -> None:
    """An INFO line at every tenth of the run (and the last epoch): epoch, loss, s/epoch, ETA."""
    step = max(1, epochs // 10)
    if (epoch + 1) % step and epoch + 1 != epochs:
        return
    per = (time.perf_counter() - started) / (epoch + 1)
    logger.info("%s epoch %d/%d loss %.4f (%.2f s/epoch, %.0f s left)", peer, epoch + 1, epochs, loss, per,
                per * (epochs - epoch - 1))


def training_report(history: list[dict[str, float]], wall_s: float, cpu_s: float) -> dict[str, Any]:
    """Timings and loss trajectory of a run: per-epoch totals (``losses``) and the benchmark's summaries of them."""
    n = len(history)
    totals = [h["total"] for h in history]
    tail = totals[-max(1, n // 10):] if n else []
    prev = totals[-max(2, n // 5):-max(1, n // 10)] if n > 1 else tail
    return {"wall_s": wall_s, "cpu_s": cpu_s, "s_per_epoch": wall_s / max(n, 1),
            "loss_first": totals[0] if n else None, "loss_last": totals[-1] if n else None,
            "loss_last10pct_mean": float(np.mean(tail)) if tail else None,
            "loss_prev10pct_mean": float(np.mean(prev or tail)) if tail else None,
            "loss_parts_last": {k: v for k, v in history[-1].items() if k not in ("epoch", "total")} if n else {},
            "losses": totals}


def embedding_frame(data: Any, emb: np.ndarray) -> pd.DataFrame:
    """``region_id``-indexed embedding table (columns ``emb_000``...), the layout urbanrep writes."""
    from urbanrep.train import embeddings_frame

    return embeddings_frame(list(data.region_ids), emb.astype(np.float32))
