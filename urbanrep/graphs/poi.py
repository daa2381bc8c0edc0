"""POI modality: per-region category counts → features ``x_poi``, ``mask_poi``, ``poi_similar`` edges.

Features (both from raw points and from published count aggregates), ``2C + 1`` columns:
``log1p`` of the count per category, the share of each category in the region, ``log1p`` of
the total. A region with no POI (or no aggregate row, or an all-zero row) is masked. The
similarity graph links each region to its ``k`` most similar POI mixes (cosine of the count
vectors), symmetrised.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd

from urbanrep.bundle import Aggregate
from urbanrep.bundle.partitioned import ParquetLayer, batch_points
from urbanrep.engine import Engine, LocalEngine
from urbanrep.engine.base import locate_xy
from urbanrep.errors import GraphError
from urbanrep.graphs._features import (
    category_codes,
    check_counts,
    count_features,
    masked_report,
    vector_aggregates,
)
from urbanrep.graphs._spatial import ModalityResult, RegionIndex
from urbanrep.graphs.similarity import EXACT_KNN_MAX, cosine_knn_graph


def poi_counts_from_points(pois: gpd.GeoDataFrame, index: RegionIndex, num_regions: int,
                           categories: Sequence[str] | None = None) -> tuple[np.ndarray, list[str], dict[str, int]]:
    """Count raw POIs per region and category by a point-in-polygon join.

    Args:
        pois: Points (metric CRS) with a ``category`` column.
        index: Spatial index of the regions.
        num_regions: ``N``.
        categories: Fixed category list (columns in this order); ``None``: the distinct values.

    Returns:
        ``(counts [N, C] float64, category names [C], report)``; the report counts the points,
        those outside every region and those without a category.
    """
    codes, names = category_codes(pois["category"], "layer 'pois' column 'category'", categories)
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


def _category_strings(table: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(codes [P], distinct values as strings)`` of a batch's ``category`` column (-1: missing)."""
    codes, uniques = pd.factorize(table.column("category").to_pandas(), use_na_sentinel=True)
    return np.asarray(codes, dtype=np.int64), np.array([str(v) for v in np.asarray(uniques, dtype=object)],
                                                        dtype=object)


def _batch_categories(index: RegionIndex, table: Any, i: int) -> list[str]:
    return list(_category_strings(table)[1])


def _batch_counts(index: RegionIndex, table: Any, i: int, *, spec: Any, steps: Sequence[tuple[str, str]],
                  names: Sequence[str], num_regions: int) -> tuple[np.ndarray, dict[str, int]]:
    """Per-region x category counts ``[N, C]`` of one row group, and its record counts."""
    x, y, non_point = batch_points(table, spec, steps)
    region = locate_xy(index, x, y)
    local, uniques = _category_strings(table)
    lookup = {n: c for c, n in enumerate(names)}
    remap = np.array([lookup.get(str(u), -1) for u in uniques] + [-1], dtype=np.int64)
    codes = remap[np.where(local >= 0, local, len(uniques))]
    ok = (region >= 0) & (codes >= 0)
    c = len(names)
    counts = np.bincount(region[ok] * c + codes[ok], minlength=num_regions * c).reshape(num_regions, c)
    missing = np.isnan(x)
    return counts.astype(np.float64), {
        "points": len(x),
        "missing_coordinates": int(missing.sum()),
        "non_point_geometries": int(non_point.sum()),
        "outside_regions": int(((region < 0) & ~missing).sum()),
        "no_category": int((codes < 0).sum()),
        "assigned": int(ok.sum()),
    }


def poi_counts_from_parquet(layer: ParquetLayer, index: RegionIndex, num_regions: int,
                            steps: Sequence[tuple[str, str]] = (), engine: Engine | None = None,
                            categories: Sequence[str] | None = None) -> tuple[np.ndarray, list[str], dict[str, Any]]:
    """:func:`poi_counts_from_points` for a layer kept on disk, reduced row group by row group.

    Two passes over the file: the distinct categories (the ``category`` column only), then the
    points located and counted per row group (on ``engine``, in-process by default); the
    partial ``[N, C]`` counts are summed. Memory: ``O(N x C)`` plus one row group. The counts
    equal those of the in-memory path on the same points (integer sums in float64).

    Args:
        layer: The POI layer.
        index: Region index (metric CRS).
        num_regions: ``N``.
        steps: CRS transforms of the points (:func:`urbanrep.bundle.partitioned.crs_steps`).
        engine: Where the row groups are read and reduced.
        categories: Fixed category list; values outside it are an error.

    Returns:
        ``(counts [N, C] float64, category names [C], report)``; the report counts the points,
        those with missing coordinates, outside every region and without a category.
    """
    engine = engine or LocalEngine()
    spec = layer.point_spec("geometry")
    distinct: set[str] = set()
    for values in engine.map_parquet(index, layer.path, ["category"], _batch_categories):
        distinct.update(values)
    if categories is not None:
        outside = sorted(distinct - {str(c) for c in categories})
        if outside:
            raise GraphError(f"layer 'pois' column 'category' ({layer.path}): classes {outside[:10]} are not in "
                             "the bundle's fixed category list; map them to listed classes (urbanrep.vocabulary)")
        names = [str(c) for c in categories]
    elif not distinct:
        raise GraphError(f"layer 'pois' column 'category' ({layer.path}): every value is missing; "
                         "the layer needs category values")
    else:
        names = [str(c) for c in np.unique(np.array(sorted(distinct), dtype=object).astype(str))]
    fn = functools.partial(_batch_counts, spec=spec, steps=tuple(steps), names=names, num_regions=num_regions)
    columns = [*layer.point_columns(), "category"]
    total = np.zeros((num_regions, len(names)))
    report: dict[str, Any] = {}
    for counts, rep in engine.map_parquet(index, layer.path, columns, fn):
        total += counts
        for key, value in rep.items():
            report[key] = report.get(key, 0) + value
    report["partitioned"] = {"file": str(layer.path), "row_groups": layer.row_groups}
    return total, names, report


def build_poi(
    region_ids: np.ndarray,
    rank: np.ndarray,
    k: int,
    *,
    pois: gpd.GeoDataFrame | ParquetLayer | None = None,
    index: RegionIndex | None = None,
    aggregates: list[Aggregate] | None = None,
    knn_exact_max: int = EXACT_KNN_MAX,
    seed: int = 0,
    crs_steps: Sequence[tuple[str, str]] = (),
    engine: Engine | None = None,
    categories: Sequence[str] | None = None,
) -> ModalityResult:
    """POI features, mask and similarity graph, from raw points or from count aggregates.

    Args:
        region_ids: ``[N]`` ids in bundle order.
        rank: Canonical tie-break rank ``[N]``.
        k: Neighbours of the similarity graph.
        pois: Raw points (metric CRS) with ``category``, or a :class:`ParquetLayer` kept on
            disk (read by row groups, see :func:`poi_counts_from_parquet`); used when given.
        index: Region index (required with ``pois``).
        aggregates: Vector aggregates of modality ``poi`` (counts), used when ``pois`` is None.
        knn_exact_max: Exact similarity kNN up to this many regions (approximate above).
        seed: Seed of the approximate kNN.
        crs_steps: CRS transforms of a :class:`ParquetLayer`'s points to the metric CRS.
        engine: Where a :class:`ParquetLayer` is read and reduced (in-process by default).
        categories: Fixed category list of raw points (the bundle's ``categories["pois"]``).

    Returns:
        :class:`ModalityResult` with ``x`` float32 ``[N, 2C + 1]``.
    """
    n = len(region_ids)
    if pois is not None:
        if index is None:
            raise ValueError("build_poi needs the region index with raw points")
        if isinstance(pois, ParquetLayer):
            counts, names, counts_report = poi_counts_from_parquet(pois, index, n, crs_steps, engine, categories)
        else:
            counts, names, counts_report = poi_counts_from_points(pois, index, n, categories)
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
