"""Spatial adjacency of regions: shared boundaries, with a nearest-centroid fallback for islands."""

from __future__ import annotations

from typing import Any

import numpy as np
import shapely

from urbanrep.graphs._spatial import Edges, knn_pairs, listed, symmetric_edges

#: Under rook contiguity with a tolerance, two regions are neighbours when their boundaries run
#: within the tolerance of each other for more than this many tolerances: two regions that meet
#: at a corner (or nearly so) have about 2 tolerances of boundary that close, one arm each side.
CORNER_STRETCHES = 4.0


def boundary_near_lengths(polygons: np.ndarray, i: np.ndarray, j: np.ndarray,
                          tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """``([P], [P])`` float64 metres of polygon ``i[p]``'s boundary within ``tolerance`` of polygon
    ``j[p]``, and of ``j[p]``'s boundary within ``tolerance`` of ``i[p]``: how long a stretch of
    boundary the two share, each way (about ``2 * tolerance`` for two that meet at a corner).

    Each polygon taking part is buffered and its boundary taken once, however many pairs it is in.
    """
    taking_part, at = np.unique(np.concatenate([i, j]), return_inverse=True)
    boundary, near = shapely.boundary(polygons[taking_part]), shapely.buffer(polygons[taking_part], tolerance)
    a, b = at[:len(i)], at[len(i):]
    return (np.asarray(shapely.length(shapely.intersection(boundary[a], near[b])), np.float64),
            np.asarray(shapely.length(shapely.intersection(boundary[b], near[a])), np.float64))


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
            line, or overlapping interiors; with a ``tolerance``, also boundaries that run within
            it of each other for more than :data:`CORNER_STRETCHES` tolerances, so that a gap is
            bridged along a shared street but a corner contact stays no neighbour).
        tolerance: Regions closer than this many metres count as touching.
        fallback_k: Nearest regions (by centroid) linked to each region left without a neighbour.

    Returns:
        Edges ``[2, E]`` (both directions, no self loops) and a report with the number of
        boundary pairs (``tolerance_pairs`` of them neighbours only through the tolerance: a gap
        bridged), the isolated regions and the fallback edges added.
    """
    n = len(polygons)
    if tolerance > 0:
        i, j = shapely.STRtree(polygons).query(polygons, predicate="dwithin", distance=tolerance)
    else:
        i, j = shapely.STRtree(polygons).query(polygons, predicate="intersects")
    keep = i < j
    i, j = i[keep], j[keep]
    bridged = 0
    if contiguity == "rook" and len(i):
        a, b = polygons[i], polygons[j]
        line = shapely.relate_pattern(a, b, "****1****") | shapely.relate_pattern(a, b, "2********")
        gap = np.flatnonzero(~line)
        if tolerance > 0 and len(gap):  # no shared line in exact topology: a gap bridged along a stretch
            ij, ji = boundary_near_lengths(polygons, i[gap], j[gap], tolerance)
            near = np.minimum(ij, ji) > CORNER_STRETCHES * tolerance
            line[gap] = near
            bridged = int(near.sum())
        i, j = i[line], j[line]
    elif tolerance > 0 and len(i):
        bridged = int((~shapely.intersects(polygons[i], polygons[j])).sum())
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
        "tolerance_pairs": bridged,
        "isolated_regions": int(len(isolated)),
        "isolated_region_ids": listed(np.asarray(region_ids)[isolated]),
        "fallback_k": int(fallback_k),
        "fallback_pairs": fallback,
        "edges": int(len(src)),
    }
    return Edges(np.stack([src, dst]), np.ones(len(src), dtype=np.float32)), report
