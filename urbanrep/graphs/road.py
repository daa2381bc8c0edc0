"""Road modality: network measures per region → ``x_road``, ``mask_road``, ``road_connected`` edges.

The road graph is built from the line vertices: vertices closer than ``node_precision`` metres
are one node, consecutive vertices of a line form an (undirected) segment. Roads that cross
without a shared vertex (bridges, tunnels) are not connected, as in OSM.

Features per region (densities per km² of region area, ``log1p``-scaled):
road length per class (the ``max_classes`` longest classes, the rest summed as ``other``; the
length inside the region by overlay), total road length, intersections (nodes of degree >= 3),
dead ends (degree 1), the mean degree of non-trivial nodes (degree != 2), circuity (summed line
length over summed straight-line distance between line ends, lines assigned by their midpoint;
1 when undefined) and, when ``betweenness_samples > 0``, the mean sampled betweenness
centrality (networkx, length-weighted, seeded) of the region's nodes.

``road_connected``: region pairs joined by a road segment whose ends lie in the two regions,
both directions, weight = number of such segments. Regions without road length are masked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import geopandas as gpd
import numpy as np
import shapely

from urbanrep.graphs._features import category_codes, masked_report
from urbanrep.graphs._spatial import ModalityResult, RegionIndex, pairwise_region_codes


def _node_ids(xy: np.ndarray, precision: float) -> tuple[np.ndarray, np.ndarray]:
    """Snap vertices to a ``precision`` grid: (node id per vertex ``[P]``, node coordinates ``[V, 2]``).

    Node ids follow the sorted grid cells and node coordinates are the grid points themselves,
    so neither depends on the order of the lines.
    """
    if not len(xy):
        return np.zeros(0, dtype=np.int64), np.zeros((0, 2))
    q = np.round(xy / precision).astype(np.int64)
    q0 = q.min(axis=0)
    q -= q0
    span = q.max(axis=0) + 1
    if float(span[0]) * float(span[1]) < 2.0**62:
        uniq, first, inv = np.unique(q[:, 0] * span[1] + q[:, 1], return_index=True, return_inverse=True)
    else:
        uniq, first, inv = np.unique(q, axis=0, return_index=True, return_inverse=True)
    node_q = q[first] + q0
    return inv.reshape(-1).astype(np.int64), node_q / (1.0 / precision)


def road_network(parts: np.ndarray, precision: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Undirected road graph of line ``parts``.

    Returns:
        ``(node_xy [V, 2], segments [S, 2] node pairs (a < b, unique), degree [V])``.
    """
    xy, part = shapely.get_coordinates(parts, return_index=True)
    node, node_xy = _node_ids(xy, precision)
    same = part[1:] == part[:-1]
    a, b = node[:-1][same], node[1:][same]
    keep = a != b
    lo, hi = np.minimum(a[keep], b[keep]), np.maximum(a[keep], b[keep])
    v = len(node_xy)
    key = np.unique(lo * v + hi)
    seg = np.stack([key // v, key % v], axis=1)
    degree = np.bincount(seg.ravel(), minlength=v)
    return node_xy, seg, degree


def _betweenness(node_xy: np.ndarray, seg: np.ndarray, samples: int, seed: int) -> np.ndarray:
    import networkx as nx

    g = nx.Graph()
    g.add_nodes_from(range(len(node_xy)))
    length = np.linalg.norm(node_xy[seg[:, 0]] - node_xy[seg[:, 1]], axis=1)
    g.add_weighted_edges_from(zip(seg[:, 0].tolist(), seg[:, 1].tolist(), length.tolist(), strict=True),
                              weight="length")
    k = min(samples, g.number_of_nodes())
    bc = nx.betweenness_centrality(g, k=k, seed=seed, weight="length", normalized=True)
    return np.fromiter((bc[i] for i in range(len(node_xy))), dtype=np.float64, count=len(node_xy))


def build_road(
    region_ids: np.ndarray,
    roads: gpd.GeoDataFrame,
    index: RegionIndex,
    region_area: np.ndarray,
    *,
    max_classes: int = 12,
    node_precision: float = 0.01,
    betweenness_samples: int = 0,
    seed: int = 0,
    categories: Sequence[str] | None = None,
) -> ModalityResult:
    """Road features, mask and road connectivity between regions.

    Args:
        region_ids: ``[N]`` ids in bundle order.
        roads: Lines (metric CRS) with a ``class`` column.
        index: Spatial index of the regions.
        region_area: Region areas in m² ``[N]``.
        max_classes: Road classes kept as separate length features.
        node_precision: Vertex snapping distance in metres.
        betweenness_samples: Sampled sources for betweenness (0 = skip).
        seed: Seed of the betweenness sample.
        categories: Fixed class list (the bundle's ``categories["roads"]``): one length feature
            per listed class, in this order, and no ``"other"`` (``max_classes`` is not used).

    Returns:
        :class:`ModalityResult` with ``x`` float32 ``[N, C + 6 (+1)]``.
    """
    n = len(region_ids)
    codes, names = category_codes(roads["class"], "layer 'roads' column 'class'", categories)
    parts, parent = shapely.get_parts(np.asarray(roads.geometry.values, dtype=object), return_index=True)
    pcode = codes[parent]
    plen = shapely.length(parts)
    if categories is not None:  # fixed columns: every listed class, in order
        kept = np.arange(len(names))
    else:  # keep the longest classes; the rest become "other"
        by_class = np.bincount(pcode[pcode >= 0], weights=plen[pcode >= 0], minlength=len(names))
        order = np.lexsort((np.arange(len(names)), -by_class))
        kept = order[:max_classes]
    remap = np.full(len(names), len(kept), dtype=np.int64)
    remap[kept] = np.arange(len(kept))
    cls_names = [names[i] for i in kept] + (["other"] if len(names) > len(kept) else [])
    pcls = np.where(pcode >= 0, remap[np.maximum(pcode, 0)], -1)
    c = len(cls_names)

    # Length per region and class (overlay; parts wholly inside a region skip the intersection).
    i, j = index.tree.query(parts, predicate="intersects")
    keep = pcls[i] >= 0
    i, j = i[keep], j[keep]
    inside = shapely.contains(index.polygons[j], parts[i])
    length = plen[i].copy()
    cut = ~inside
    length[cut] = shapely.length(shapely.intersection(parts[i[cut]], index.polygons[j[cut]]))
    lengths = np.bincount(j * c + pcls[i], weights=length, minlength=n * c).reshape(n, c)

    # Road graph, node location and connectivity.
    node_xy, seg, degree = road_network(parts, node_precision)
    node_region = index.locate(shapely.points(node_xy)) if len(node_xy) else np.zeros(0, np.int64)
    located = node_region >= 0
    nr = node_region[located]
    nd = degree[located]
    inter = np.bincount(nr, weights=(nd >= 3).astype(float), minlength=n)
    dead = np.bincount(nr, weights=(nd == 1).astype(float), minlength=n)
    nontrivial = nd != 2
    deg_sum = np.bincount(nr[nontrivial], weights=nd[nontrivial], minlength=n)
    deg_cnt = np.bincount(nr[nontrivial], minlength=n)
    mean_degree = np.divide(deg_sum, deg_cnt, out=np.zeros(n), where=deg_cnt > 0)
    connected = pairwise_region_codes(node_region[seg[:, 0]], node_region[seg[:, 1]], n, symmetric=True)

    # Circuity: summed length over summed end-to-end distance of the lines assigned by midpoint.
    ends = np.stack([shapely.get_coordinates(shapely.get_point(parts, 0)),
                     shapely.get_coordinates(shapely.get_point(parts, -1))])
    straight = np.linalg.norm(ends[0] - ends[1], axis=1)
    mid_region = index.locate(shapely.line_interpolate_point(parts, 0.5, normalized=True))
    ok = (mid_region >= 0) & (straight > 0)
    sum_len = np.bincount(mid_region[ok], weights=plen[ok], minlength=n)
    sum_straight = np.bincount(mid_region[ok], weights=straight[ok], minlength=n)
    circuity = np.divide(sum_len, sum_straight, out=np.ones(n), where=sum_straight > 0)

    km2 = np.maximum(region_area / 1e6, 1e-12)
    total = lengths.sum(axis=1)
    blocks = [np.log1p(lengths / 1e3 / km2[:, None]), np.log1p(total / 1e3 / km2)[:, None],
              np.log1p(inter / km2)[:, None], np.log1p(dead / km2)[:, None], mean_degree[:, None],
              circuity[:, None]]
    cols = ([f"log1p:km_per_km2:{c_}" for c_ in cls_names] +
            ["log1p:km_per_km2:total", "log1p:intersections_per_km2", "log1p:dead_ends_per_km2",
             "mean_node_degree", "circuity"])
    report: dict[str, Any] = {
        "source": "raw",
        "lines": int(len(roads)),
        "parts": int(len(parts)),
        "classes": cls_names,
        "nodes": int(len(node_xy)),
        "segments": int(len(seg)),
        "nodes_outside_regions": int((~located).sum()),
        "intersections": int(inter.sum()),
    }
    if betweenness_samples > 0 and len(node_xy):
        bc = _betweenness(node_xy, seg, betweenness_samples, seed)
        bc_sum = np.bincount(nr, weights=bc[located], minlength=n)
        bc_cnt = np.bincount(nr, minlength=n)
        blocks.append(np.divide(bc_sum, bc_cnt, out=np.zeros(n), where=bc_cnt > 0)[:, None])
        cols.append("mean_betweenness")
        report["betweenness_samples"] = int(min(betweenness_samples, len(node_xy)))
    mask = total > 0
    x = np.hstack(blocks).astype(np.float32)
    x[~mask] = 0
    report.update(**masked_report(mask, region_ids), edges=connected.num_edges)
    return ModalityResult(x=x, mask=mask, edges=connected, feature_names=cols, report=report)
