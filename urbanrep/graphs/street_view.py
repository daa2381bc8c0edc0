"""Street-view modality: one node per image, image kNN graphs and image → region membership.

Images whose features are unusable (unreadable file, missing ``feature``) are dropped and
counted. The remaining images become ``image`` nodes (``x`` = features, ``pos`` = location in
metres) with
* ``(image, spatial_knn, image)``: symmetric kNN in space, weight ``exp(-d / median d)``
  (median over the kNN edges of positive length);
* ``(image, feature_knn, image)``: symmetric kNN in feature space, weight = cosine similarity;
* ``(image, in_region, region)``: each image to the region containing it, weight 1. Images
  outside every region keep their node and kNN edges but get no membership edge (counted).

The spatial kNN is exact (k-d tree); the feature kNN is exact up to ``knn_exact_max`` images
and approximate above (see :mod:`urbanrep.graphs.similarity`); ``torch_cluster`` is not
required. Ties (images at equal distances, common when several photos share a location) are
broken by a canonical image rank computed from the images themselves (location, then
features), not by row order, so shuffling the layer permutes the graph and changes nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import geopandas as gpd
import numpy as np
import shapely

from urbanrep.graphs._spatial import Edges, RegionIndex, knn_pairs, symmetric_edges
from urbanrep.graphs.similarity import EXACT_KNN_MAX, cosine_knn_graph


@dataclass
class StreetViewResult:
    """Image nodes and their edges.

    Attributes:
        x: float32 ``[M, D]`` image features.
        pos: float32 ``[M, 2]`` image locations (metres).
        spatial: ``(image, spatial_knn, image)`` edges.
        feature: ``(image, feature_knn, image)`` edges.
        membership: ``(image, in_region, region)`` edges.
        report: Counts of images kept, dropped and outside regions.
    """

    x: np.ndarray
    pos: np.ndarray
    spatial: Edges
    feature: Edges
    membership: Edges
    report: dict[str, Any]


def image_rank(pos: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Canonical rank of images (int64 ``[M]``): by x, then y, then two fixed projections of the features.

    Depends only on each image's own location and features, so it is the same whatever the row
    order; only images identical in location and features keep their row order (they are
    interchangeable in the graph).
    """
    m = len(pos)
    if m == 0:
        return np.zeros(0, dtype=np.int64)
    feats = np.asarray(features, dtype=np.float64)
    proj = feats @ np.random.default_rng(12345).standard_normal((feats.shape[1], 2))
    order = np.lexsort((proj[:, 1], proj[:, 0], pos[:, 1], pos[:, 0]))
    rank = np.empty(m, dtype=np.int64)
    rank[order] = np.arange(m, dtype=np.int64)
    return rank


def spatial_knn_graph(pos: np.ndarray, k: int, rank: np.ndarray | None = None) -> Edges:
    """Symmetric kNN graph of points in space, weight ``exp(-d / median d)``.

    Args:
        pos: float ``[M, 2]`` locations (metres).
        k: Neighbours per point (before symmetrisation).
        rank: Tie-break rank ``[M]`` (default: row order).

    Returns:
        Edges ``[2, E]`` without self loops (points at the same location are linked, weight 1).
    """
    m = len(pos)
    if m < 2:
        return Edges()
    rank = np.arange(m, dtype=np.int64) if rank is None else rank
    r, c, _ = knn_pairs(pos, k, rank, decimals=3)
    src, dst = symmetric_edges(r, c, m)
    d = np.linalg.norm(pos[src] - pos[dst], axis=1)
    positive = d[d > 0]
    scale = float(np.median(positive)) if len(positive) else 1.0
    return Edges(np.stack([src, dst]), np.exp(-d / scale).astype(np.float32))


def build_street_view(
    images: gpd.GeoDataFrame,
    features: np.ndarray,
    ok: np.ndarray,
    index: RegionIndex,
    k: int,
    knn_exact_max: int = EXACT_KNN_MAX,
    seed: int = 0,
) -> StreetViewResult:
    """Image nodes, image kNN graphs and membership edges.

    Args:
        images: Street-view points (metric CRS), ``M`` rows.
        features: float32 ``[M, D]`` per-image features.
        ok: bool ``[M]``, False for images without usable features (dropped).
        index: Spatial index of the regions.
        k: Neighbours of both image kNN graphs.
        knn_exact_max: Exact feature kNN up to this many images (approximate above; the spatial
            kNN is always exact).
        seed: Seed of the approximate feature kNN.

    Returns:
        :class:`StreetViewResult` over the kept images (in layer order).
    """
    keep = np.flatnonzero(np.asarray(ok, dtype=bool))
    geoms = np.asarray(images.geometry.values, dtype=object)[keep]
    pos = np.stack([shapely.get_x(geoms), shapely.get_y(geoms)], axis=1) if len(keep) else np.zeros((0, 2))
    x = np.asarray(features, dtype=np.float32)[keep]
    m = len(keep)
    rank = image_rank(pos, x)
    spatial = spatial_knn_graph(pos, k, rank)
    feature, sim_report = cosine_knn_graph(x, np.ones(m, dtype=bool), k, rank, knn_exact_max, seed)
    region = index.locate(geoms) if m else np.zeros(0, np.int64)
    inside = np.flatnonzero(region >= 0)
    membership = Edges(np.stack([inside, region[inside]]).astype(np.int64), np.ones(len(inside), dtype=np.float32))
    report = {
        "images": int(len(images)),
        "dropped_unusable": int(len(images) - m),
        "nodes": int(m),
        "outside_regions": int(m - len(inside)),
        "regions_with_images": int(len(np.unique(region[inside]))),
        "spatial_edges": spatial.num_edges,
        "feature_edges": feature.num_edges,
        "feature_zero_vectors": sim_report["zero_vectors"],
        "feature_knn_exact": sim_report["exact"],
    }
    return StreetViewResult(x=x, pos=pos.astype(np.float32), spatial=spatial, feature=feature,
                            membership=membership, report=report)
