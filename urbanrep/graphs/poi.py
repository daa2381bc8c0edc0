"""POI modality: per-region category counts → features ``x_poi``, ``mask_poi``, ``poi_similar`` edges.

Features (both from raw points and from published count aggregates), ``2C + 1`` columns:
``log1p`` of the count per category, the share of each category in the region, ``log1p`` of
the total. A region with no POI (or no aggregate row, or an all-zero row) is masked. The
similarity graph links each region to its ``k`` most similar POI mixes (cosine of the count
vectors), symmetrised.
"""

from __future__ import annotations

from typing import Any

import geopandas as gpd
import numpy as np

from urbanrep.bundle import Aggregate
from urbanrep.graphs._features import (
    category_codes,
    check_counts,
    count_features,
    masked_report,
    vector_aggregates,
)
from urbanrep.graphs._spatial import ModalityResult, RegionIndex
from urbanrep.graphs.similarity import EXACT_KNN_MAX, cosine_knn_graph


def poi_counts_from_points(pois: gpd.GeoDataFrame, index: RegionIndex, num_regions: int
                           ) -> tuple[np.ndarray, list[str], dict[str, int]]:
    """Count raw POIs per region and category by a point-in-polygon join.

    Args:
        pois: Points (metric CRS) with a ``category`` column.
        index: Spatial index of the regions.
        num_regions: ``N``.

    Returns:
        ``(counts [N, C] float64, category names [C], report)``; the report counts the points,
        those outside every region and those without a category.
    """
    codes, names = category_codes(pois["category"], "layer 'pois' column 'category'")
    region = index.locate(pois.geometry)
    ok = (region >= 0) & (codes >= 0)
    c = len(names)
    counts = np.bincount(region[ok] * c + codes[ok], minlength=num_regions * c).reshape(num_regions, c)
    report = {
        "points": int(len(pois)),
        "outside_regions": int((region < 0).sum()),
        "no_category": int((codes < 0).sum()),
        "assigned": int(ok.sum()),
    }
    return counts.astype(np.float64), names, report


def build_poi(
    region_ids: np.ndarray,
    rank: np.ndarray,
    k: int,
    *,
    pois: gpd.GeoDataFrame | None = None,
    index: RegionIndex | None = None,
    aggregates: list[Aggregate] | None = None,
    knn_exact_max: int = EXACT_KNN_MAX,
    seed: int = 0,
) -> ModalityResult:
    """POI features, mask and similarity graph, from raw points or from count aggregates.

    Args:
        region_ids: ``[N]`` ids in bundle order.
        rank: Canonical tie-break rank ``[N]``.
        k: Neighbours of the similarity graph.
        pois: Raw points (metric CRS) with ``category``; used when given.
        index: Region index (required with ``pois``).
        aggregates: Vector aggregates of modality ``poi`` (counts), used when ``pois`` is None.
        knn_exact_max: Exact similarity kNN up to this many regions (approximate above).
        seed: Seed of the approximate kNN.

    Returns:
        :class:`ModalityResult` with ``x`` float32 ``[N, 2C + 1]``.
    """
    n = len(region_ids)
    if pois is not None:
        if index is None:
            raise ValueError("build_poi needs the region index with raw points")
        counts, names, counts_report = poi_counts_from_points(pois, index, n)
        report: dict[str, Any] = {"source": "raw", **counts_report}
        has_row = np.ones(n, dtype=bool)
    else:
        aggs = aggregates or []
        counts, has_row, names = vector_aggregates(aggs, region_ids)
        check_counts(counts, f"POI aggregate(s) {[a.name for a in aggs]}")
        report = {"source": "aggregate", "aggregates": [a.name for a in aggs],
                  "regions_without_row": int((~has_row).sum())}
    mask = has_row & (counts.sum(axis=1) > 0)
    x, cols = count_features(counts, names)
    x[~mask] = 0
    edges, sim_report = cosine_knn_graph(counts, mask, k, rank, knn_exact_max, seed)
    report.update(categories=len(names), **masked_report(mask, region_ids), similarity=sim_report,
                  edges=edges.num_edges)
    return ModalityResult(x=x, mask=mask, edges=edges, feature_names=cols, report=report)
