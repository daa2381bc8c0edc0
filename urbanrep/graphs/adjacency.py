"""Spatial adjacency of regions: shared boundaries, with a nearest-centroid fallback for islands."""

from __future__ import annotations

from typing import Any

import numpy as np
import shapely

from urbanrep.graphs._spatial import Edges, knn_pairs, listed, symmetric_edges


def adjacency_edges(
    polygons: np.ndarray,
    centroids: np.ndarray,
    rank: np.ndarray,
    region_ids: np.ndarray,
    contiguity: str = "queen",
    tolerance: float = 0.0,
    fallback_k: int = 3,
) -> tuple[Edges, dict[str, Any]]:
    """Symmetric region adjacency (weight 1), with kNN-centroid edges for regions without neighbours.

    Args:
        polygons: ``N`` region polygons in a metric CRS.
        centroids: float ``[N, 2]`` region centroids (metres).
        rank: Canonical tie-break rank ``[N]``.
        region_ids: ``[N]`` ids (for the report).
        contiguity: ``"queen"`` (any shared boundary point) or ``"rook"`` (a shared boundary
            line, or overlapping interiors).
        tolerance: Regions closer than this many metres count as touching.
        fallback_k: Nearest regions (by centroid) linked to each region left without a neighbour.

    Returns:
        Edges ``[2, E]`` (both directions, no self loops) and a report with the number of
        boundary edges, the isolated regions and the fallback edges added.
    """
    n = len(polygons)
    if tolerance > 0:
        i, j = shapely.STRtree(polygons).query(polygons, predicate="dwithin", distance=tolerance)
    else:
        i, j = shapely.STRtree(polygons).query(polygons, predicate="intersects")
    keep = i < j
    i, j = i[keep], j[keep]
    if contiguity == "rook" and len(i):
        a, b = polygons[i], polygons[j]
        if tolerance > 0:
            a, b = shapely.buffer(a, tolerance / 2), shapely.buffer(b, tolerance / 2)
        line = shapely.relate_pattern(a, b, "****1****") | shapely.relate_pattern(a, b, "2********")
        i, j = i[line], j[line]
    degree = np.bincount(np.concatenate([i, j]), minlength=n)
    isolated = np.flatnonzero(degree == 0)
    rows, cols = [i], [j]
    fallback = 0
    if len(isolated) and fallback_k > 0 and n > 1:
        r, c, _ = knn_pairs(centroids, fallback_k, rank, decimals=3)
        from_iso = np.isin(r, isolated)
        rows.append(r[from_iso])
        cols.append(c[from_iso])
        fallback = int(from_iso.sum())
    src, dst = symmetric_edges(np.concatenate(rows), np.concatenate(cols), n)
    report = {
        "contiguity": contiguity,
        "tolerance_m": float(tolerance),
        "boundary_pairs": int(len(i)),
        "isolated_regions": int(len(isolated)),
        "isolated_region_ids": listed(np.asarray(region_ids)[isolated]),
        "fallback_k": int(fallback_k),
        "fallback_pairs": fallback,
        "edges": int(len(src)),
    }
    return Edges(np.stack([src, dst]), np.ones(len(src), dtype=np.float32)), report
