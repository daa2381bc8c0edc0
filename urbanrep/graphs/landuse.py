"""Land-use modality: per-region class shares → ``x_landuse``, ``mask_landuse``, ``landuse_similar``.

From raw polygons (``class`` column) the area of each class inside each region is measured by
overlay (spatial-index candidates, then vectorised ``intersection`` areas; parcels lying wholly
inside a region skip the intersection). Features: the share of each class in the classified
area, ``log1p`` of the classified area in hectares and the fraction of the region covered
(overlapping land-use polygons are counted once per polygon). From aggregates (counts or shares
per class): the shares and ``log1p`` of the row total. A region without classified area (or
without a row) is masked; the similarity graph is the cosine kNN of the class vectors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import geopandas as gpd
import numpy as np
import shapely

from urbanrep.bundle import Aggregate
from urbanrep.graphs._features import category_codes, check_counts, masked_report, vector_aggregates
from urbanrep.graphs._spatial import ModalityResult, RegionIndex
from urbanrep.graphs.similarity import EXACT_KNN_MAX, cosine_knn_graph


def landuse_areas(landuse: gpd.GeoDataFrame, index: RegionIndex, num_regions: int,
                  categories: Sequence[str] | None = None) -> tuple[np.ndarray, list[str], dict[str, int]]:
    """Area (m²) of each land-use class inside each region.

    Args:
        landuse: Polygons (metric CRS) with a ``class`` column.
        index: Spatial index of the regions.
        num_regions: ``N``.
        categories: Fixed class list (columns in this order); ``None``: the distinct values.

    Returns:
        ``(areas [N, C] float64, class names [C], report)``.
    """
    codes, names = category_codes(landuse["class"], "layer 'landuse' column 'class'", categories)
    geoms = np.asarray(landuse.geometry.values, dtype=object)
    i, j = index.tree.query(geoms, predicate="intersects")
    keep = codes[i] >= 0
    i, j = i[keep], j[keep]
    inside = shapely.contains(index.polygons[j], geoms[i])
    area = shapely.area(geoms[i])
    part = ~inside
    area[part] = shapely.area(shapely.intersection(geoms[i[part]], index.polygons[j[part]]))
    c = len(names)
    areas = np.bincount(j * c + codes[i], weights=area, minlength=num_regions * c).reshape(num_regions, c)
    touched = np.zeros(len(geoms), dtype=bool)
    touched[i] = True
    report = {"polygons": int(len(geoms)), "outside_regions": int((~touched & (codes >= 0)).sum()),
              "no_class": int((codes < 0).sum()), "pieces": int(len(i))}
    return areas, names, report


def build_landuse(
    region_ids: np.ndarray,
    rank: np.ndarray,
    k: int,
    *,
    landuse: gpd.GeoDataFrame | None = None,
    index: RegionIndex | None = None,
    region_area: np.ndarray | None = None,
    aggregates: list[Aggregate] | None = None,
    knn_exact_max: int = EXACT_KNN_MAX,
    seed: int = 0,
    categories: Sequence[str] | None = None,
) -> ModalityResult:
    """Land-use features, mask and similarity graph, from raw polygons or aggregates.

    Args:
        region_ids: ``[N]`` ids in bundle order.
        rank: Canonical tie-break rank ``[N]``.
        k: Neighbours of the similarity graph.
        landuse: Raw polygons with ``class`` (metric CRS); used when given.
        index: Region index (required with ``landuse``).
        region_area: Region areas in m² ``[N]`` (required with ``landuse``).
        aggregates: Vector aggregates of modality ``landuse`` (counts or shares per class).
        knn_exact_max: Exact similarity kNN up to this many regions (approximate above).
        seed: Seed of the approximate kNN.
        categories: Fixed class list of raw polygons (the bundle's ``categories["landuse"]``).

    Returns:
        :class:`ModalityResult` with ``x`` float32 ``[N, C + 2]`` (raw) or ``[N, C + 1]``.
    """
    n = len(region_ids)
    if landuse is not None:
        if index is None or region_area is None:
            raise ValueError("build_landuse needs the region index and areas with raw polygons")
        values, names, counts_report = landuse_areas(landuse, index, n, categories)
        report: dict[str, Any] = {"source": "raw", **counts_report}
        has_row = np.ones(n, dtype=bool)
    else:
        aggs = aggregates or []
        values, has_row, names = vector_aggregates(aggs, region_ids)
        check_counts(values, f"land-use aggregate(s) {[a.name for a in aggs]}")
        report = {"source": "aggregate", "aggregates": [a.name for a in aggs],
                  "regions_without_row": int((~has_row).sum())}
    total = values.sum(axis=1)
    mask = has_row & (total > 0)
    shares = np.divide(values, total[:, None], out=np.zeros_like(values), where=total[:, None] > 0)
    cols = [f"share:{c}" for c in names]
    if landuse is not None and region_area is not None:
        coverage = np.clip(np.divide(total, region_area, out=np.zeros(n), where=region_area > 0), 0, 1)
        x = np.hstack([shares, np.log1p(total / 1e4)[:, None], coverage[:, None]])
        cols += ["log1p:area_ha", "coverage"]
    else:
        x = np.hstack([shares, np.log1p(total)[:, None]])
        cols += ["log1p:total"]
    x = x.astype(np.float32)
    x[~mask] = 0
    edges, sim_report = cosine_knn_graph(values, mask, k, rank, knn_exact_max, seed)
    report.update(classes=len(names), **masked_report(mask, region_ids), similarity=sim_report,
                  edges=edges.num_edges)
    return ModalityResult(x=x, mask=mask, edges=edges, feature_names=cols, report=report)

