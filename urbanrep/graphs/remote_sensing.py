"""Remote-sensing modality: per-region image features → ``x_remote_sensing``, mask, ``rs_similar``.

Precomputed per-region features (vector aggregates of modality ``remote_sensing``) are used as
they are; a region without a row is masked. Raw tiles (footprint polygons or centre points, one
feature vector per tile from the ``feature`` column or the image encoder) are averaged per
region: a polygon tile weighs by the area it shares with the region, a point tile counts fully
for the region containing it. Tiles that could not be encoded are left out (and counted); a
region covered by no usable tile is masked. The similarity graph is the cosine kNN of the
region features.
"""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import scipy.sparse as sp
import shapely

from urbanrep.bundle import Aggregate
from urbanrep.graphs._features import masked_report, vector_aggregates
from urbanrep.graphs._spatial import ModalityResult, RegionIndex
from urbanrep.graphs.similarity import EXACT_KNN_MAX, cosine_knn_graph


def tile_weights(tiles: gpd.GeoDataFrame, index: RegionIndex, num_regions: int) -> sp.csr_matrix:
    """Sparse ``[N, T]`` weights of tiles in regions (shared area in m², or 1 for point tiles)."""
    geoms = np.asarray(tiles.geometry.values, dtype=object)
    is_point = shapely.get_type_id(geoms) == shapely.GeometryType.POINT
    rows, cols, vals = [], [], []
    pts = np.flatnonzero(is_point)
    if len(pts):
        reg = index.locate(geoms[pts])
        ok = reg >= 0
        rows.append(reg[ok])
        cols.append(pts[ok])
        vals.append(np.ones(int(ok.sum())))
    polys = np.flatnonzero(~is_point)
    if len(polys):
        i, j = index.tree.query(geoms[polys], predicate="intersects")
        tile = polys[i]
        inside = shapely.contains(index.polygons[j], geoms[tile])
        area = shapely.area(geoms[tile])
        cut = ~inside
        area[cut] = shapely.area(shapely.intersection(geoms[tile[cut]], index.polygons[j[cut]]))
        pos = area > 0
        rows.append(j[pos])
        cols.append(tile[pos])
        vals.append(area[pos])
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    v = np.concatenate(vals) if vals else np.zeros(0)
    return sp.csr_matrix((v, (r, c)), shape=(num_regions, len(geoms)))


def build_remote_sensing(
    region_ids: np.ndarray,
    rank: np.ndarray,
    k: int,
    *,
    tiles: gpd.GeoDataFrame | None = None,
    tile_features: np.ndarray | None = None,
    tile_ok: np.ndarray | None = None,
    index: RegionIndex | None = None,
    aggregates: list[Aggregate] | None = None,
    knn_exact_max: int = EXACT_KNN_MAX,
    seed: int = 0,
) -> ModalityResult:
    """Remote-sensing features, mask and similarity graph.

    Args:
        region_ids: ``[N]`` ids in bundle order.
        rank: Canonical tie-break rank ``[N]``.
        k: Neighbours of the similarity graph.
        tiles: Raw tiles (metric CRS); used when given, with ``tile_features`` ``[T, D]`` and
            ``tile_ok`` ``[T]`` (False = unusable tile).
        index: Region index (required with ``tiles``).
        aggregates: Vector aggregates of modality ``remote_sensing`` (used as they are).
        knn_exact_max: Exact similarity kNN up to this many regions (approximate above).
        seed: Seed of the approximate kNN.

    Returns:
        :class:`ModalityResult` with ``x`` float32 ``[N, D]``.
    """
    n = len(region_ids)
    if tiles is not None:
        if index is None or tile_features is None:
            raise ValueError("build_remote_sensing needs the region index and tile features with raw tiles")
        ok = np.ones(len(tiles), dtype=bool) if tile_ok is None else np.asarray(tile_ok, dtype=bool)
        w = tile_weights(tiles, index, n)
        w = w @ sp.diags(ok.astype(np.float64))
        w.eliminate_zeros()
        total = np.asarray(w.sum(axis=1)).ravel()
        feats = np.asarray(tile_features, dtype=np.float64)
        x = np.asarray(w @ feats)
        x = np.divide(x, total[:, None], out=np.zeros_like(x), where=total[:, None] > 0)
        mask = total > 0
        in_any = np.asarray((w != 0).sum(axis=0)).ravel() > 0
        report = {"source": "raw", "tiles": int(len(tiles)), "unusable_tiles": int((~ok).sum()),
                  "tiles_outside_regions": int((~in_any & ok).sum())}
        names = [f"f{i:03d}" for i in range(feats.shape[1])]
    else:
        aggs = aggregates or []
        x, mask, names = vector_aggregates(aggs, region_ids)
        report = {"source": "aggregate", "aggregates": [a.name for a in aggs]}
    x = x.astype(np.float32)
    x[~mask] = 0
    edges, sim_report = cosine_knn_graph(x, mask, k, rank, knn_exact_max, seed)
    report.update(dim=int(x.shape[1]), **masked_report(mask, region_ids), similarity=sim_report,
                  edges=edges.num_edges)
    return ModalityResult(x=x, mask=mask, edges=edges, feature_names=names, report=report)
