"""Street-view modality: one node per image, image kNN graphs and image → region membership.

Images whose features are unusable (unreadable file, missing ``feature``) are dropped and
counted. The remaining images become ``image`` nodes (``x`` = features, ``pos`` = location in
metres) with
* ``(image, spatial_knn, image)``: symmetric kNN in space, weight ``exp(-d / median d)``
  (median over the kNN edges of positive length);
* ``(image, feature_knn, image)``: symmetric kNN in feature space, weight = cosine similarity;
* ``(image, in_region, region)``: each image to the region containing it, weight 1. Images
  outside every region keep their node and kNN edges but get no membership edge (counted).

Exact kNN (k-d tree in space; brute force for high-dimensional features); ``torch_cluster`` is
not required. Ties are broken by image order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import geopandas as gpd
import numpy as np
import shapely

from urbanrep.graphs._spatial import Edges, RegionIndex, knn_pairs, symmetric_edges
from urbanrep.graphs.similarity import cosine_knn_graph


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


def spatial_knn_graph(pos: np.ndarray, k: int) -> Edges:
    """Symmetric kNN graph of points in space, weight ``exp(-d / median d)``."""
    m = len(pos)
    if m < 2:
        return Edges()
    r, c, _ = knn_pairs(pos, k, np.arange(m, dtype=np.int64), decimals=3)
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
) -> StreetViewResult:
    """Image nodes, image kNN graphs and membership edges.

    Args:
        images: Street-view points (metric CRS), ``M`` rows.
        features: float32 ``[M, D]`` per-image features.
        ok: bool ``[M]``, False for images without usable features (dropped).
        index: Spatial index of the regions.
        k: Neighbours of both image kNN graphs.

    Returns:
        :class:`StreetViewResult` over the kept images (in layer order).
    """
    keep = np.flatnonzero(np.asarray(ok, dtype=bool))
    geoms = np.asarray(images.geometry.values, dtype=object)[keep]
    pos = np.stack([shapely.get_x(geoms), shapely.get_y(geoms)], axis=1) if len(keep) else np.zeros((0, 2))
    x = np.asarray(features, dtype=np.float32)[keep]
    m = len(keep)
    spatial = spatial_knn_graph(pos, k)
    feature, sim_report = cosine_knn_graph(x, np.ones(m, dtype=bool), k, np.arange(m, dtype=np.int64))
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
    }
    return StreetViewResult(x=x, pos=pos.astype(np.float32), spatial=spatial, feature=feature,
                            membership=membership, report=report)
