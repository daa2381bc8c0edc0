"""Schema-valid region graphs for tests and benchmarks of the model (not an ETL).

:func:`graph_from_arrays` assembles a graph from dense per-region arrays (used to build small
real-data fixtures from a bundle's aggregates while keeping the model independent of the
graph builders); :func:`random_region_graph` generates seeded random graphs of any size and
any modality subset for scaling benchmarks. Both return graphs that pass
:func:`urbanrep.graphs.schema.validate_graph`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch_geometric.data import HeteroData

from urbanrep.graphs.schema import (
    ADJACENT,
    GRAPH_SCHEMA_VERSION,
    IMAGE,
    IMAGE_FEATURE,
    IMAGE_IN_REGION,
    IMAGE_SPATIAL,
    MODALITY_EDGE,
    REGION,
    feature_key,
    mask_key,
    validate_graph,
)

ALL_MODALITIES = ("poi", "mobility", "landuse", "road", "remote_sensing", "street_view")


def _set_edges(data: HeteroData, et: tuple[str, str, str], src: np.ndarray, dst: np.ndarray,
               weight: np.ndarray, attr: np.ndarray | None = None) -> None:
    data[et].edge_index = torch.as_tensor(np.stack([src, dst]).astype(np.int64))
    data[et].edge_weight = torch.as_tensor(np.asarray(weight, dtype=np.float32))
    if attr is not None:
        data[et].edge_attr = torch.as_tensor(np.asarray(attr, dtype=np.float32))


def knn_edges(points: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric kNN edges (no self loops) of ``points`` ``[N, 2]`` (scipy KD-tree)."""
    from scipy.spatial import cKDTree

    n = len(points)
    k = min(k, n - 1)
    if k < 1:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    _, idx = cKDTree(points).query(points, k=k + 1)
    src = np.repeat(np.arange(n), k)
    dst = idx[:, 1:].reshape(-1)
    pairs = np.unique(np.concatenate([np.stack([src, dst], 1), np.stack([dst, src], 1)]), axis=0)
    return pairs[:, 0], pairs[:, 1]


def cosine_knn_edges(x: np.ndarray, mask: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Symmetric cosine-similarity kNN among rows where ``mask`` is True (dense; small ``N`` only).

    Returns:
        ``(src, dst, similarity)``.
    """
    idx = np.flatnonzero(mask)
    if len(idx) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    xs = x[idx].astype(np.float64)
    xs = xs / np.maximum(np.linalg.norm(xs, axis=1, keepdims=True), 1e-12)
    sim = xs @ xs.T
    np.fill_diagonal(sim, -np.inf)
    kk = min(k, len(idx) - 1)
    nn_idx = np.argsort(-sim, axis=1, kind="stable")[:, :kk]
    a = np.repeat(np.arange(len(idx)), kk)
    b = nn_idx.reshape(-1)
    pairs = np.unique(np.concatenate([np.stack([a, b], 1), np.stack([b, a], 1)]), axis=0)
    w = np.clip(sim[pairs[:, 0], pairs[:, 1]], 0.0, None)
    return idx[pairs[:, 0]], idx[pairs[:, 1]], w.astype(np.float32)


def graph_from_arrays(region_ids: Sequence[Any], pos: np.ndarray, features: dict[str, tuple[np.ndarray, np.ndarray]],
                      adjacency: tuple[np.ndarray, np.ndarray] | None = None, od: np.ndarray | None = None,
                      mobility_features: np.ndarray | None = None, similarity_k: int = 10,
                      crs: str = "EPSG:3857") -> HeteroData:
    """A region graph from dense arrays.

    Args:
        region_ids: ``N`` ids in node order.
        pos: ``[N, 2]`` metric centroids.
        features: ``{modality: (x [N, F], mask [N])}`` for ``poi``, ``landuse``, ``road``,
            ``remote_sensing``; similarity kNN graphs are built for all but ``road``
            (``road_connected`` then falls back to adjacency with weight 1).
        adjacency: ``(src, dst)`` symmetric region adjacency; kNN(6) on ``pos`` when None.
        od: ``[N, N]`` or ``[S, N, N]`` trip counts; adds the mobility modality.
        mobility_features: ``[N, F]`` extra per-region mobility features (appended to the
            log in/out totals).
        similarity_k: ``k`` of the similarity graphs.
        crs: CRS string stored on the graph.

    Returns:
        A validated :class:`HeteroData`.
    """
    n = len(region_ids)
    data = HeteroData()
    data.schema_version = GRAPH_SCHEMA_VERSION
    data.region_ids = list(region_ids)
    data.crs = crs
    reg = data[REGION]
    reg.num_nodes = n
    reg.pos = torch.as_tensor(np.asarray(pos, dtype=np.float32))
    mods = []
    for m, (x, mask) in features.items():
        mask = np.asarray(mask, dtype=bool)
        x = np.where(mask[:, None], np.asarray(x, dtype=np.float32), 0.0).astype(np.float32)
        reg[feature_key(m)] = torch.as_tensor(x)
        reg[mask_key(m)] = torch.as_tensor(mask)
        mods.append(m)
        if m == "road":
            src, dst = adjacency if adjacency is not None else knn_edges(pos, 6)
            _set_edges(data, MODALITY_EDGE[m], src, dst, np.ones(len(src)))
        else:
            src, dst, w = cosine_knn_edges(x, mask, similarity_k)
            _set_edges(data, MODALITY_EDGE[m], src, dst, w)
    if od is not None:
        od3 = od[None] if od.ndim == 2 else od
        total = od3.sum(0)
        o, d = np.nonzero(total * (1 - np.eye(n)))
        attr = od3[:, o, d].T if od3.shape[0] > 1 else None
        _set_edges(data, MODALITY_EDGE["mobility"], o, d, total[o, d], attr)
        out_f = [total.sum(1), total.sum(0)]
        if od3.shape[0] > 1:
            out_f += [*od3.sum(2), *od3.sum(1)]
        xm = np.log1p(np.stack(out_f, 1))
        if mobility_features is not None:
            xm = np.concatenate([xm, mobility_features], 1)
        mask = (total.sum(0) + total.sum(1)) > 0
        reg[feature_key("mobility")] = torch.as_tensor(np.where(mask[:, None], xm, 0).astype(np.float32))
        reg[mask_key("mobility")] = torch.as_tensor(mask)
        mods.append("mobility")
    src, dst = adjacency if adjacency is not None else knn_edges(pos, 6)
    _set_edges(data, ADJACENT, src, dst, np.ones(len(src)))
    data.modalities = [m for m in ALL_MODALITIES if m in mods]
    return validate_graph(data)


def random_region_graph(num_regions: int, modalities: Sequence[str] = ("poi", "mobility", "landuse"),
                        seed: int = 0, feature_dims: dict[str, int] | None = None, num_slices: int = 0,
                        images_per_region: float = 3.0, mask_rate: float = 0.05,
                        degree: int = 6, similarity_degree: int = 10, flows_per_region: int = 20) -> HeteroData:
    """A seeded random graph with the schema of a real one (for benchmarks and tests).

    Regions are uniform points in a 1 km-per-region square; adjacency is spatial kNN; feature
    counts are negative-binomial, similarity edges random with uniform weights, OD flows go
    mostly to spatial neighbours with Poisson counts; ``mask_rate`` of regions miss each
    modality. Memory and time are linear in ``num_regions``.

    Args:
        num_regions: ``N``.
        modalities: Any subset of the six modalities.
        seed: Seed of the ``numpy.random.default_rng``.
        feature_dims: Feature width per modality (defaults: poi 26, landuse 11, road 8,
            remote_sensing 64, street_view 64, mobility 4).
        num_slices: Per-slice mobility counts in ``edge_attr`` (0: none).
        images_per_region: Mean street-view images per region.
        mask_rate: Share of regions without each aggregated modality.
        degree: Spatial kNN degree of the adjacency.
        similarity_degree: Random similarity edges per region.
        flows_per_region: OD pairs per origin.

    Returns:
        A validated :class:`HeteroData`.
    """
    rng = np.random.default_rng(seed)
    dims = {"poi": 26, "landuse": 11, "road": 8, "remote_sensing": 64, "street_view": 64, "mobility": 4}
    dims.update(feature_dims or {})
    n = num_regions
    side = 1000.0 * np.sqrt(n)
    pos = rng.uniform(0, side, size=(n, 2))
    data = HeteroData()
    data.schema_version = GRAPH_SCHEMA_VERSION
    data.region_ids = list(range(n))
    data.crs = "EPSG:3857"
    reg = data[REGION]
    reg.num_nodes = n
    reg.pos = torch.as_tensor(pos.astype(np.float32))
    adj = knn_edges(pos, degree)
    _set_edges(data, ADJACENT, adj[0], adj[1], np.ones(len(adj[0])))
    data.feature_names = {m: [f"{'image_features' if m == 'remote_sensing' else 'count'}:{m}_{j:02d}"
                              for j in range(dims[m])] for m in modalities if m != "street_view"}
    for m in modalities:
        if m not in ALL_MODALITIES:
            raise ValueError(f"unknown modality {m!r}")
        if m == "street_view":
            continue
        mask = rng.random(n) >= mask_rate
        if m == "remote_sensing":
            x = rng.normal(0, 0.05, size=(n, dims[m]))
        else:
            x = rng.negative_binomial(1, 0.1, size=(n, dims[m])).astype(np.float64)
        reg[feature_key(m)] = torch.as_tensor(np.where(mask[:, None], x, 0).astype(np.float32))
        reg[mask_key(m)] = torch.as_tensor(mask)
        ids = np.flatnonzero(mask)
        if m == "mobility":
            e = n * flows_per_region
            src = rng.integers(0, n, e)
            near = adj[1][rng.integers(0, max(len(adj[1]), 1), e)] if len(adj[1]) else src
            dst = np.where(rng.random(e) < 0.7, near, rng.integers(0, n, e))
            keep = (src != dst) & mask[src] & mask[dst]
            pairs = np.unique(np.stack([src[keep], dst[keep]], 1), axis=0)
            counts = rng.poisson(20, size=(len(pairs), max(num_slices, 1))) + 1
            _set_edges(data, MODALITY_EDGE[m], pairs[:, 0], pairs[:, 1], counts.sum(1),
                       counts if num_slices else None)
        elif len(ids) > 1:
            e = len(ids) * similarity_degree // 2
            a, b = ids[rng.integers(0, len(ids), e)], ids[rng.integers(0, len(ids), e)]
            keep = a != b
            pairs = np.unique(np.concatenate([np.stack([a[keep], b[keep]], 1),
                                              np.stack([b[keep], a[keep]], 1)]), axis=0)
            w = rng.uniform(0.2, 1.0, len(pairs))
            if m == "road":
                w = rng.integers(1, 6, len(pairs)).astype(np.float64)
            _set_edges(data, MODALITY_EDGE[m], pairs[:, 0], pairs[:, 1], w)
        else:
            _set_edges(data, MODALITY_EDGE[m], np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
    if "street_view" in modalities:
        m_img = max(int(round(n * images_per_region)), 1)
        owner = rng.integers(0, n, m_img)
        has = rng.random(n) >= mask_rate
        owner = owner[has[owner]] if has[owner].any() else owner
        m_img = len(owner)
        ipos = pos[owner] + rng.normal(0, 200.0, (m_img, 2))
        data[IMAGE].num_nodes = m_img
        data[IMAGE].x = torch.as_tensor(rng.normal(0, 0.05, (m_img, dims["street_view"])).astype(np.float32))
        data[IMAGE].pos = torch.as_tensor(ipos.astype(np.float32))
        s, d = knn_edges(ipos, 4)
        dist = np.linalg.norm(ipos[s] - ipos[d], axis=1)
        _set_edges(data, IMAGE_SPATIAL, s, d, np.exp(-dist / max(np.median(dist), 1e-6)) if len(dist) else dist)
        e = m_img * 2
        a, b = rng.integers(0, m_img, e), rng.integers(0, m_img, e)
        keep = a != b
        _set_edges(data, IMAGE_FEATURE, a[keep], b[keep], rng.uniform(0.5, 1.0, int(keep.sum())))
        _set_edges(data, IMAGE_IN_REGION, np.arange(m_img), owner, np.ones(m_img))
    data.modalities = [m for m in ALL_MODALITIES if m in modalities]
    return validate_graph(data)


def region_adjacency(regions: Any) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray, str]:
    """Touching-polygon adjacency (kNN(3) for islands), metric centroids and the metric CRS.

    Args:
        regions: GeoDataFrame of region polygons (any CRS; geographic ones are projected to UTM).

    Returns:
        ``((src, dst), pos [N, 2], crs)``.
    """
    g = regions.to_crs(regions.estimate_utm_crs()) if regions.crs is not None and regions.crs.is_geographic \
        else regions
    a, b = g.sindex.query(g.geometry, predicate="intersects")
    keep = a != b
    a, b = a[keep], b[keep]
    cent = g.geometry.centroid
    pos = np.stack([cent.x.to_numpy(), cent.y.to_numpy()], 1)
    deg = np.bincount(a, minlength=len(g))
    if (deg == 0).any():
        ka, kb = knn_edges(pos, 3)
        iso = deg[ka] == 0
        pairs = np.unique(np.concatenate([np.stack([a, b], 1), np.stack([ka[iso], kb[iso]], 1),
                                          np.stack([kb[iso], ka[iso]], 1)]), axis=0)
        a, b = pairs[:, 0], pairs[:, 1]
    return (a, b), pos, str(g.crs)


def graph_from_bundle(bundle: Any, similarity_k: int = 10) -> HeteroData:
    """A region graph from a bundle's *aggregates* only (test fixture; the ETL is ``build_graph``).

    Vector aggregates of ``poi``, ``landuse``, ``road`` and ``remote_sensing`` become region
    features (the first one per modality); the first sliced mobility matrix (else the first
    unsliced one) becomes the OD graph, and mobility vector aggregates are appended (log1p)
    to the in/out totals.
    """
    ids = bundle.region_ids
    adj, pos, crs = region_adjacency(bundle.regions)
    feats: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for m in ("poi", "landuse", "road", "remote_sensing"):
        aggs = bundle.aggregates_for(m, "vector")
        if aggs:
            feats[m] = aggs[0].dense(ids)
    od, mob_x = None, None
    mats = bundle.aggregates_for("mobility", "matrix")
    if mats:
        dense = [a.dense(ids)[0] for a in mats]
        sliced = [d for d in dense if d.shape[0] > 1]
        od = (sliced or dense)[0]
        vecs = bundle.aggregates_for("mobility", "vector")
        if vecs:
            mob_x = np.log1p(np.clip(np.concatenate([v.dense(ids)[0] for v in vecs], 1), 0, None))
    return graph_from_arrays(list(ids), pos, feats, adjacency=adj, od=od, mobility_features=mob_x,
                             similarity_k=similarity_k, crs=crs)


def permute_regions(data: HeteroData, perm: Any) -> HeteroData:
    """The same graph with region nodes reordered: new region ``i`` is old region ``perm[i]``.

    Region attributes (``pos``, ``x_*``, ``mask_*``), ``region_ids`` and every edge endpoint on
    the region side are remapped; image nodes keep their order.
    """
    perm = torch.as_tensor(perm, dtype=torch.long)
    n = perm.numel()
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(n)
    out = data.clone()
    out.region_ids = [data.region_ids[int(i)] for i in perm]
    reg = out[REGION]
    for key in list(data[REGION].keys()):
        val = data[REGION][key]
        if isinstance(val, torch.Tensor) and val.dim() >= 1 and val.size(0) == n:
            reg[key] = val[perm]
    for et in data.edge_types:
        ei = data[et].edge_index.clone()
        if et[0] == REGION:
            ei[0] = inv[ei[0]]
        if et[2] == REGION:
            ei[1] = inv[ei[1]]
        out[et].edge_index = ei
    return out


def with_noise_modality(data: HeteroData, like: str = "poi", slot: str = "road", width: int = 16,
                        seed: int = 0) -> HeteroData:
    """A copy of ``data`` with a pure-noise aggregated modality added (a check of the fusion).

    The new modality, in the unused modality slot ``slot``, holds seeded standard Gaussian
    features on the regions where ``like`` has data (same mask), zeros elsewhere; its expert
    reads them over region adjacency (the graph gets no edges of its own for it). A fusion
    whose weights track information should give it a weight near 0.

    Args:
        data: A region graph without ``slot``.
        like: The modality whose mask the noise copies.
        slot: An aggregated modality name the graph does not use.
        width: Noise feature columns.
        seed: Seed of the noise.

    Returns:
        The new graph (``data`` is not modified); valid under the schema.

    Raises:
        ValueError: when ``slot`` is already used or ``like`` is absent.
    """
    if slot in list(data.modalities) or like not in list(data.modalities):
        raise ValueError(f"need a graph with {like!r} and without {slot!r}; it has {list(data.modalities)}")
    out = data.clone()
    mask = data[REGION][mask_key(like)].clone()
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(mask.numel(), width, generator=gen) * mask.unsqueeze(-1).float()
    out[REGION][feature_key(slot)] = x
    out[REGION][mask_key(slot)] = mask
    out.modalities = [*list(data.modalities), slot]
    names = dict(getattr(data, "feature_names", None) or {})
    names[slot] = [f"noise_{i}" for i in range(width)]
    out.feature_names = names
    validate_graph(out)
    return out
