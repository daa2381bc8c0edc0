"""Cosine-similarity kNN graphs over regions (POI mix, land use, remote sensing) or images.

Rows are L2-normalised, so Euclidean kNN on the unit vectors is exactly cosine kNN; the search
is exact (k-d tree for up to 32 dimensions, brute force above) and ties are broken by the
canonical rank, which makes the graph independent of row order.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from urbanrep.graphs._spatial import Edges, knn_pairs, symmetric_edges


def cosine_knn_graph(features: np.ndarray, mask: np.ndarray, k: int, rank: np.ndarray) -> tuple[Edges, dict[str, Any]]:
    """Symmetric kNN graph on cosine similarity; weight = cosine similarity.

    Only rows with ``mask`` True and a non-zero vector take part; the others get no edges.

    Args:
        features: ``[N, F]`` vectors (e.g. POI counts, land-use shares, image features).
        mask: bool ``[N]``.
        k: Neighbours per node (before symmetrisation; capped at the number of nodes - 1).
        rank: Canonical tie-break rank ``[N]``.

    Returns:
        The edges (over all ``N`` nodes) and a report (``nodes``, ``zero_vectors``).
    """
    feats = np.asarray(features, dtype=np.float64)
    n = len(feats)
    norm = np.linalg.norm(feats, axis=1)
    use = np.flatnonzero(np.asarray(mask, dtype=bool) & (norm > 0))
    report = {"nodes": int(len(use)), "zero_vectors": int((np.asarray(mask, bool) & (norm == 0)).sum())}
    if len(use) < 2:
        return Edges(), report
    unit = feats[use] / norm[use, None]
    r, c, _ = knn_pairs(unit, k, rank[use], decimals=7)
    src, dst = symmetric_edges(use[r], use[c], n)
    unit_all = np.zeros_like(feats)
    unit_all[use] = unit
    sim = np.einsum("ij,ij->i", unit_all[src], unit_all[dst])
    return Edges(np.stack([src, dst]), sim.astype(np.float32)), report
