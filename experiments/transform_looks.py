"""Looks at the written-embedding transform on the development cities (never the held-out ones).

The default's written embedding (:mod:`urbanrep.written`) mixes each region's row with its
neighbours' mean and appends the 1- and 2-hop neighbour means: Singapore and São Paulo gain much
from it, Chicago-77's full model scores better without it ("bare": the row as trained, the
positional columns and the volumes). These looks ask what the preference follows, with the same
scores :mod:`experiments.select_design` uses (strict R², mean of shuffled and spatial-block folds,
3 training seeds), on the default's as-trained runs (another learned variant's with ``--model``):

- ``--thin P``: every count of the city (POIs, land use, OD trips) binomially thinned to a share
  ``P`` before the graph is built (the inputs' sampling noise raised, the targets unchanged);
- ``--modalities``: the graph built with a subset of the city's modalities;
- ``--rows N``: each written embedding scored on random subsets of ``N`` regions (3 per seed; a
  standardised ``RidgeCV`` in shuffled 5-fold CV, 3 splits, the strict probe without the harness),
  the probe's training rows as the only change;
- the variants (``--variants``): the default; ``bare``; ``raw+hops`` (unsmoothed row and both hop
  means); ``raw+hopkK`` / ``s.5+hopkK`` (unsmoothed or half-smoothed row, each hop mean compressed
  to its K leading principal components; ``raw+hoprR``: one component per R regions, as
  ``model.output_scale_regions``); ``s.5+hops`` (the default before round z: both hop means at full
  width); ``detail`` (the default with each region's difference from its neighbours' mean appended,
  cut to the hop blocks' width); ``raw+joint16`` (both hop means together compressed to
  16); ``flowK`` (the default with the city's K leading flow-profile components appended);
  ``miss`` / ``miss+hops`` (each region's row mixed with its neighbours' mean by the share of the
  modalities it has no data of: a region with every modality keeps its row, one with none takes
  its neighbours'; without or with both hop means); ``miss+s.5+hops`` (the share is half of that
  plus one half: the default's smoothing, more where data is missing); ``od`` / ``od-hop2`` (the
  default with the mean over the regions a region exchanges trips with, weighted by the trips,
  appended / in place of the 2-hop mean); ``edge`` / ``edge2`` / ``edge4`` (the default with an
  edge-preserving smoothing of the row: each neighbour's pull weighted by how alike the two rows
  are, :func:`edge_aware_smoothing`, sharpness 1 / 2 / 4); ``s.5+hoprecR`` / ``raw+hoprecR`` (as
  ``s.5+hoprR`` / ``raw+hoprR``, each hop block written as its rank-k approximation in the row's own
  columns, :func:`low_rank`, instead of its k principal component scores: the same for a
  fixed-penalty ridge, not whitened by a standardising probe); ``pc`` / ``pcR`` (the default with
  its own row written as the scores of its principal components, all ``C`` of them (a rotation:
  nothing changes for a fixed-penalty ridge, KMeans or cosine similarity, a standardising probe
  sees it whitened) or one per ``R`` regions); ``eqvar`` (the default with every column scaled to
  the same variance, then to the default's total: a standardising probe sees exactly the default,
  a fixed-penalty ridge sees what the standardising one does); ``counts`` / ``counts8`` /
  ``logcounts8`` (the default with every count column of the city's aggregated modalities appended,
  :func:`count_block`: as counts, or their leading principal components, one per 8 regions, of the
  counts or of their ``log1p``); ``logcounts`` / ``sqrtcounts`` (all of them on the ``log1p`` /
  square-root scale); ``sqrtclip`` (square-root counts, each column's z-scores clipped at 3) /
  ``sqrtzero`` (square-root counts, a region without the modality's data counted zero); looked at
  against the default with them (seventeenth session): ``nocounts`` (none), ``logzero`` (``log1p``
  scale, zero without records), ``sqrtzero8`` / ``sqrtzero8m`` (the block's, or each modality's
  block's, principal components, one per 8 regions), ``sqrtzeromob`` (mobility's block as all its
  components), ``sqrtzero-mob`` (every count column but mobility's: what the default writes since
  round 2026-12-07ab), ``hellinger`` (the square root of each count's share of its modality's
  total, :func:`hellinger_block`), ``volzero`` (the volumes of a region without records at zero,
  :func:`zero_volumes`), ``odpc8`` / ``odrec8`` (the default with the leading principal components,
  one per 8 regions, of each region's square-root OD trip counts sent and received appended,
  :func:`od_components`: each scaled like one embedding column, or the block as a whole);
  ``countlag`` (the default with its count columns' 1-hop neighbour mean appended, cut to one
  principal component per 8 regions like a hop block); looked at in the eighteenth session, from the
members side by side (``--model abl_concat_members``; :func:`members_variant`): ``cons`` (their
consensus written as the default writes it), ``cons3`` (its smoothed row written three times),
``cons+dev`` / ``cons+dev8`` (each member's difference from the consensus appended, whole or as its
leading principal components, one per 8 regions); and ``mobshare`` (every count column, mobility's as
the square root of its shares of the region's trips: round 2026-12-07ac's candidate); after round
ac, ``volK`` / ``appK`` (the volumes, or the volumes and the count columns, at ``K`` times an
embedding column's variance: a fixed-penalty probe's prior on a region's size; ``app1`` is the
default; a standardising probe sees no change); in the nineteenth session ``effrank`` (the default's
count columns, each modality's block as a whole at the variance of as many embedding columns as its
effective rank, :func:`append_by_effective_rank`, instead of one per column; a standardising probe
sees no change). On a graph with mobility each line also gives the target-free flow agreement
(:func:`experiments.select_design.flow_structure_agreement`).

Nothing here is a design rule; the results are recorded in ``experiments/DESIGN_SELECTION_2026-12-07w.md`` (thirteenth and
fourteenth sessions), ``DESIGN_SELECTION_2026-12-07z.md`` (fifteenth, sixteenth), ``DESIGN_SELECTION_2026-12-07ab.md``
(seventeenth) and ``DESIGN_SELECTION.md`` (eighteenth, nineteenth).
Example: ``python -m experiments.transform_looks --out /tmp/looks --cities chicago77 --thin 0.01``.
"""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from experiments.benchmark import _variant_configs, model_variants, trained_run
from experiments.select_design import (
    CITIES,
    DEV_CITIES,
    HELD_OUT,
    flow_structure_agreement,
    load_city,
    paper_score,
    scalar_tasks,
    spatial_blocks_for,
    strict_scores,
)

log = logging.getLogger("transform_looks")

#: Variants that read the region polygons (``written_variant``'s ``regions``).
POLYGON_VARIANTS = ("border", "rook", "posknn", "posmix")

#: Variants that only change one setting of the written-embedding transform (``ModelConfig``).
SETTING_VARIANTS: dict[str, dict[str, Any]] = {
    "scales1": {"output_scales": 1}, "scales3": {"output_scales": 3}, "share.25": {"output_smoothing": 0.25},
    "share.75": {"output_smoothing": 0.75}, "pos4": {"output_position": 4}, "pos16": {"output_position": 16},
    "vollog": {"volume_scales": ("log",)}, "vollog+sqrt": {"volume_scales": ("log", "sqrt")}}

VARIANTS = ("default", "bare", "raw+hops", "raw+hopk8", "raw+hopk16", "raw+hopk32", "raw+joint16",
            "s.5+hops", "s.5+hopk8", "s.5+hopk16", "raw+hopr8", "detail", "flow4", "flow8", "flow16", "miss",
            "miss+hops", "miss+s.5+hops", "od", "od-hop2", "edge", "edge2", "edge4",
            "s.5+hoprec8", "s.5+hoprec16", "raw+hoprec8", "pc", "pc2", "pc4", "pc8", "eqvar",
            "counts", "counts8", "logcounts8", "logcounts", "sqrtcounts", "sqrtclip", "sqrtzero",
            "nocounts", "logzero", "sqrtzero8", "sqrtzero8m", "hellinger", "volzero", "sqrtzeromob", "sqrtzero-mob", "odpc8", "odrec8", "countlag",
            "cons", "cons3", "cons+dev", "cons+dev8", "mobshare", "app1", "vol4", "vol16", "app4", "effrank",
            *POLYGON_VARIANTS, *SETTING_VARIANTS, "moblog", "moblog+shares", "untrained")


def od_matrix(data: Any) -> Any:
    """``[N, N]`` sparse float64 trips from each region (row) to each (column): the OD edges' weights
    (unit weights without them), summed; None on a graph without OD edges."""
    import scipy.sparse as sp

    from urbanrep.graphs.schema import MODALITY_EDGE

    et, n = MODALITY_EDGE["mobility"], len(data.region_ids)
    if et not in data.edge_types:
        return None
    ei = data[et].edge_index.cpu().numpy()
    w = getattr(data[et], "edge_weight", None)
    w = np.ones(ei.shape[1]) if w is None else w.cpu().numpy().astype(np.float64)
    return sp.csr_matrix((w, (ei[0], ei[1])), shape=(n, n))


def flow_neighbour_operator(data: Any) -> Any:
    """``[N, N]`` sparse: each region's mean over the regions it exchanges trips with, weighted by the
    trips both ways (OD edge weights; intra-region trips left out); a region without trips keeps its row."""
    import scipy.sparse as sp

    od = od_matrix(data)
    if od is None:
        raise SystemExit("transform_looks: the od variants need OD edges; the graph has no mobility")
    a = od - sp.diags(od.diagonal())  # intra-region trips left out
    a = a + a.T
    total = np.asarray(a.sum(1)).ravel()
    return sp.csr_matrix(sp.diags(1.0 / np.where(total > 0, total, 1.0)) @ a + sp.diags((total == 0).astype(float)))


def edge_aware_smoothing(trained: np.ndarray, edge_index: np.ndarray, share: float, sharpness: float) -> np.ndarray:
    """``[N, C]``: each region's row moved towards each adjacent region's by ``share`` times a weight
    that falls with how unlike the two rows are (an edge-preserving, bilateral-filter-like step).

    ``x_i + share * sum_j w_ij (x_j - x_i) / deg_i`` with ``w_ij = exp(-sharpness * d_ij^2 / (2 m))``,
    ``d_ij`` the Euclidean distance of the two as-trained rows and ``m`` the median of ``d^2`` over
    the graph's edges (scale-free; no target). Where every neighbour is alike (``w = 1``) this is the
    default's smoothing; a region unlike all its neighbours keeps most of its own row.
    """
    import scipy.sparse as sp

    from urbanrep.smoothing import undirected_adjacency

    n = trained.shape[0]
    a = undirected_adjacency(edge_index, n).tocoo()
    x = trained.astype(np.float64)
    d2 = ((x[a.row] - x[a.col]) ** 2).sum(1)
    m = float(np.median(d2)) if d2.size else 1.0
    w = np.exp(-sharpness * d2 / (2.0 * max(m, 1e-12)))
    degree = np.maximum(np.bincount(a.row, minlength=n), 1).astype(np.float64)
    p = sp.csr_matrix((w / degree[a.row], (a.row, a.col)), shape=(n, n))
    return (x + share * (p @ x - np.asarray(p.sum(1)).ravel()[:, None] * x)).astype(np.float32)


def low_rank(x: np.ndarray, k: int) -> np.ndarray:
    """``[N, C]``: the centred ``x``'s best rank-``k`` approximation in its own ``C`` columns.

    The same span, variances and distances as :func:`urbanrep.smoothing.leading_components`' ``k``
    scores (a ridge with a fixed penalty, KMeans or cosine similarity see no difference), but a probe
    that standardises each column no longer whitens the block: the block's weak directions keep
    their small share instead of one unit of variance each.
    """
    xc = x.astype(np.float64) - x.mean(0, dtype=np.float64)
    u, s, vt = np.linalg.svd(xc, full_matrices=False)
    return ((u[:, :k] * s[:k]) @ vt[:k]).astype(np.float32)


def count_block(data: Any, scale: str = "linear", missing_as_zero: bool = False) -> np.ndarray:
    """``[N, K]`` every count column of the graph's aggregated modalities (POI categories, trip
    totals, ...) as counts (``scale`` "linear"), their ``log1p`` ("log") or their square root
    ("sqrt", Poisson noise's variance-stabilising scale), centred over the regions that have the
    modality (0 for the others), as :func:`urbanrep.volumes.region_volumes` treats their totals;
    with ``missing_as_zero``, a region without the modality counts zero and every region is centred."""
    from urbanrep.graphs.schema import REGION, mask_key
    from urbanrep.volumes import region_counts

    n, out = len(data.region_ids), []
    for m in data.modalities:
        block = region_counts(data, (m,), scale)  # a region without records counts zero, every region centred
        mask = getattr(data[REGION], mask_key(m), None)
        if block.shape[1] and mask is not None and not missing_as_zero:  # centred over the regions with data
            has = mask.cpu().numpy().astype(bool)
            block[has] -= block[has].mean(0)
            block[~has] = 0.0
        out.append(block)  # a constant column stays, all zeros: no probe sees it
    return np.hstack(out) if out else np.zeros((n, 0))


def hellinger_block(data: Any, modalities: Sequence[str] | None = None) -> np.ndarray:
    """``[N, K]`` every count column of the graph's aggregated modalities (or of ``modalities``) as the
    square root of its share of the modality's total in the region (the Hellinger transform of
    compositional counts: a region's mix, not its size, which the volumes carry), centred; a region
    without the modality's records, or with a zero total, is all zeros before centring
    (:func:`urbanrep.volumes.region_counts` with every modality as shares)."""
    from urbanrep.volumes import region_counts

    mods = list(data.modalities if modalities is None else modalities)
    return region_counts(data, mods, "sqrt", shares=mods)


def zero_volumes(data: Any, scales: Sequence[str]) -> np.ndarray:
    """:func:`urbanrep.volumes.region_volumes` with a region without the modality's records at a total
    of zero (its features are zero) instead of the column mean, every region centred."""
    from urbanrep.volumes import VOLUME_SCALES, _totals

    n, out = len(data.region_ids), []
    for m in data.modalities:
        got = _totals(data, m)
        if got is None:
            continue
        total = got[0]  # zero in a region without records
        for name in scales:
            col = VOLUME_SCALES[name](total)
            out.append(col - col.mean())
    return np.stack(out, 1) if out else np.zeros((n, 0))


def od_components(data: Any, k: int) -> np.ndarray:
    """``[N, k']`` leading principal component scores (``k' <= k``) of each region's square-root OD
    trip counts: the trips it sends to every region beside those every region sends it (``[N, 2N]``,
    centred); an empty block on a graph without OD edges."""
    from urbanrep.smoothing import leading_components

    n, sparse = len(data.region_ids), od_matrix(data)
    if sparse is None:
        return np.zeros((n, 0))
    od = sparse.toarray()
    rows = np.sqrt(np.hstack([od, od.T]))
    scores = leading_components(rows, min(k, n - 1)).astype(np.float64)
    spread = scores.std(0)
    return scores[:, spread > 1e-9 * max(float(spread.max(initial=0.0)), 1e-300)]  # no rounding-noise components


def aligned_members(emb: np.ndarray, members: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """``([N, C] consensus, members x [N, C])``: :func:`urbanrep.network.align_members`'s consensus of
    the ``[N, members * C]`` members side by side, and each centred member rotated onto it."""
    from urbanrep.network import align_members, rotate_onto

    cons = align_members(emb, members).astype(np.float64)
    c = emb.shape[1] // members
    blocks = [emb[:, i * c:(i + 1) * c].astype(np.float64) for i in range(members)]
    return cons, [rotate_onto(b - b.mean(0, keepdims=True), cons) for b in blocks]


def members_variant(name: str, trained: np.ndarray, ei: np.ndarray, mc: Any, volumes: np.ndarray) -> np.ndarray:
    """The ``cons*`` variants, from the members side by side (``mc.ensemble_output == "concat"``).

    ``cons``: the consensus written as the default writes it (the default's written embedding);
    ``cons3``: the same with its smoothed row written three times (the row block as wide as the
    members side by side, without what they disagree on: a standardising probe's prior weight of
    the learned row tripled); ``cons+dev``: the consensus written as the default, with each member's
    difference from it (``[N, members * C]``, after rotation onto it) appended; ``cons+dev8``: those
    differences as their leading principal components, one per 8 regions.
    """
    from dataclasses import replace

    from urbanrep.position import append_scaled
    from urbanrep.smoothing import leading_components, scale_width
    from urbanrep.written import scale_to_total_variance, written_from_config

    if mc.ensemble_output != "concat" or mc.ensemble < 2:
        raise SystemExit(f"transform_looks: {name} needs the members side by side (--model abl_concat_members)")
    cons, members = aligned_members(trained, mc.ensemble)
    out = written_from_config(cons.astype(np.float32), ei, replace(mc, ensemble_output="aligned"), volumes)
    c = cons.shape[1]
    if name == "cons":
        return out
    if name == "cons3":
        return scale_to_total_variance(np.hstack([out[:, :c], out[:, :c], out]).astype(np.float32), mc.output_variance)
    dev = np.hstack([m - cons for m in members])
    if name == "cons+dev8":
        dev = leading_components(dev, scale_width(len(cons), dev.shape[1], 8))
    elif name != "cons+dev":
        raise SystemExit(f"transform_looks: unknown variant {name!r}")
    return scale_to_total_variance(append_scaled(out, dev), mc.output_variance)


def default_count_block(data: Any, mc: Any) -> np.ndarray:
    """``[N, K]`` the count columns ``mc``'s modalities would write on the default's square-root scale
    (:func:`urbanrep.volumes.region_counts` with ``mc``'s skipped and share modalities), unscaled: for
    the variants that append them themselves, whose ``mc`` has the count step off."""
    from urbanrep.volumes import counted_modalities, region_counts

    return region_counts(data, counted_modalities(data.modalities, mc), "sqrt", mc.output_counts_shares)


def effective_rank(block: np.ndarray) -> float:
    """The participation ratio ``(sum λ)² / sum λ²`` of the eigenvalues ``λ`` of ``block``'s column
    correlation matrix (constant columns left out): how many independent directions its columns
    hold, 1 for columns that are one direction written many times, their number for uncorrelated ones."""
    sd = block.std(axis=0)
    x = block[:, sd > 1e-12] / sd[sd > 1e-12]
    if x.shape[1] <= 1:
        return float(x.shape[1])
    lam = np.clip(np.linalg.eigvalsh(np.cov(x, rowvar=False, bias=True)), 0.0, None)
    return float(lam.sum() ** 2 / max(float((lam ** 2).sum()), 1e-300))


def append_by_effective_rank(emb: np.ndarray, blocks: Sequence[np.ndarray]) -> np.ndarray:
    """``emb`` with each block's columns appended, each column scaled like one embedding column and
    then the block as a whole by ``sqrt(effective_rank(block) / width)``: a block weighs as many
    embedding columns as it holds independent directions, not as many as it has columns (an hourly
    profile weighs what the same profile in three slices weighs)."""
    from urbanrep.position import append_scaled

    out = emb
    for block in blocks:
        width = int((block.std(axis=0) > 1e-12).sum())
        scaled = append_scaled(emb, block)[:, emb.shape[1]:]
        out = np.hstack([out, scaled * np.float32(np.sqrt(effective_rank(block) / max(width, 1)))])
    return out.astype(np.float32)


def graph_polygons(regions: Any, data: Any) -> np.ndarray:
    """``[N]`` the bundle's region polygons (``regions``, its layer) in a metric CRS, in graph node order."""
    from urbanrep.graphs._spatial import resolve_metric_crs

    layer = regions.to_crs(resolve_metric_crs(regions, None)).set_index(regions["region_id"].astype(str))
    return layer.geometry.loc[[str(r) for r in data.region_ids]].to_numpy()


#: Neighbours per region of the centroid kNN graph of the ``posknn`` and ``posmix`` looks.
POSITION_KNN = 6


def centroid_knn_edges(regions: Any, data: Any, k: int) -> np.ndarray:
    """``[2, E]`` both directions of the ``k`` nearest regions by centroid distance (metric CRS), in
    graph node order; ``regions`` is the bundle's layer."""
    import shapely

    from urbanrep.graphs._spatial import knn_pairs, symmetric_edges

    cen = shapely.get_coordinates(shapely.centroid(graph_polygons(regions, data)))
    n = len(cen)
    src, dst, _ = knn_pairs(cen, k, np.arange(n, dtype=np.int64), decimals=3)
    return np.stack(symmetric_edges(src, dst, n))


def border_lengths(regions: Any, data: Any, edge_index: np.ndarray, tolerance: float = 1.0) -> np.ndarray:
    """``[E]`` metres of boundary each adjacency edge's two regions share: the mean over both ways of
    the length of one region's boundary within ``tolerance`` metres of the other (0 for regions that
    touch at a corner only, or an island's nearest-centroid edge); ``regions`` is the bundle's layer."""
    from urbanrep.graphs.adjacency import boundary_near_lengths

    one_way, other_way = boundary_near_lengths(graph_polygons(regions, data), np.asarray(edge_index[0]),
                                               np.asarray(edge_index[1]), tolerance)
    return (one_way + other_way) / 2.0


def weighted_hop(edge_index: np.ndarray, weights: np.ndarray, n: int) -> Any:
    """``[N, N]`` neighbour mean weighted by ``weights`` (per edge of ``edge_index``); a region whose
    edges all weigh 0 takes the plain mean over them, one without edges keeps its own row."""
    import scipy.sparse as sp

    from urbanrep.smoothing import hop_operator

    w = sp.csr_matrix((weights, (np.asarray(edge_index[0]), np.asarray(edge_index[1]))), shape=(n, n))
    w = w.maximum(w.T)  # both directions, whichever way an edge is stored
    total = np.asarray(w.sum(axis=1)).ravel()
    plain = hop_operator(edge_index, n)
    weighted = sp.diags(1.0 / np.where(total > 0, total, 1.0)) @ w
    return sp.csr_matrix(sp.diags((total > 0).astype(float)) @ weighted + sp.diags((total <= 0).astype(float)) @ plain)


def missing_share(data: Any) -> np.ndarray:
    """``[N]`` share of the graph's modalities each region has no data of (its ``mask_<modality>`` False)."""
    from urbanrep.graphs.schema import REGION, mask_key

    n = len(data.region_ids)
    masks = [getattr(data[REGION], mask_key(m), None) for m in data.modalities]
    has = np.stack([np.ones(n, bool) if mk is None else mk.cpu().numpy().astype(bool) for mk in masks], 1)
    return 1.0 - has.mean(1)


#: The variants that append the regions' count columns themselves (looked at on the default without them).
COUNT_VARIANTS = re.compile(r"(log|sqrt)?counts8?|sqrtclip|sqrtzero(8m?|-?mob)?|nocounts|volzero|countlag|logzero|hellinger|mobshare|app\d+|effrank|moblog(\+shares)?")


def written_variant(name: str, trained: np.ndarray, data: Any, mc: Any, regions: Any = None) -> np.ndarray:
    """The written embedding ``[N, C']`` of variant ``name`` from the as-trained ``[N, C]`` (graph node order).

    Every variant is its change to the written embedding of ``mc`` without the count columns; where
    ``mc`` writes them (``model.output_counts``, the default since round 2026-12-07aa), they are
    appended last, as the model appends them, except to the variants that append count columns of
    their own (:data:`COUNT_VARIANTS`). ``regions``: the bundle's region layer (graph node order
    by ``region_id``), for the variants that read the polygons (:data:`POLYGON_VARIANTS`).
    """
    from dataclasses import replace

    from urbanrep.position import append_scaled
    from urbanrep.volumes import appended_columns
    from urbanrep.written import scale_to_total_variance

    if name in SETTING_VARIANTS:  # the default with one transform setting changed
        mc, name = replace(mc, **SETTING_VARIANTS[name]), "default"
    out = _written_variant(name, trained, data, replace(mc, output_counts="none"), regions)
    counts = appended_columns(data, data.modalities, mc)[1]
    if counts is None or COUNT_VARIANTS.fullmatch(name):
        return out
    return scale_to_total_variance(append_scaled(out, counts), mc.output_variance)


def _written_variant(name: str, trained: np.ndarray, data: Any, mc: Any, regions: Any = None) -> np.ndarray:
    """:func:`written_variant` for a ``mc`` without count columns."""
    from urbanrep.experts.mobility import flow_components
    from urbanrep.graphs.schema import ADJACENT, MODALITY_EDGE
    from urbanrep.position import append_position, append_scaled
    from urbanrep.smoothing import (
        hop_operator,
        leading_components,
        neighbourhood_scales,
        neighbourhood_transform,
        scale_width,
        smooth_over_neighbours,
    )
    from urbanrep.volumes import region_volumes
    from urbanrep.written import scale_to_total_variance, written_from_config

    if name in POLYGON_VARIANTS and regions is None:
        raise SystemExit(f"transform_looks: the {name} look needs the region polygons (regions=)")
    ei = data[ADJACENT].edge_index.cpu().numpy()
    n, c = trained.shape
    volumes = region_volumes(data, data.modalities, mc.volume_scales)
    if name == "detail":  # the default's blocks and each region's difference from its neighbours' mean
        hop = hop_operator(ei, n)
        k = scale_width(n, c, mc.output_scale_regions)
        base = neighbourhood_transform(trained, ei, mc.output_smoothing, mc.output_scales, mc.output_scale_regions)
        x = trained.astype(np.float64)
        out = append_position(np.hstack([base, leading_components(x - hop @ x, k)]).astype(np.float32), ei,
                              mc.output_position)
        return scale_to_total_variance(append_scaled(out, volumes), mc.output_variance)
    if name.startswith("edge"):  # edge-preserving smoothing of the row; the default's hop blocks of it
        smoothed = edge_aware_smoothing(trained, ei, mc.output_smoothing, float(name[4:] or 1))
        out = append_position(neighbourhood_transform(smoothed, ei, 0.0, mc.output_scales, mc.output_scale_regions), ei,
                              mc.output_position)
        return scale_to_total_variance(append_scaled(out, volumes), mc.output_variance)
    if name == "nocounts":  # the default without the count columns (abl_no_counts)
        return written_from_config(trained, ei, mc, volumes)
    if name == "countlag":  # the default with its count columns' 1-hop neighbour mean appended (cut like a hop block)
        from urbanrep.smoothing import hop_operator, leading_components, scale_width

        out = written_from_config(trained, ei, mc, volumes)  # mc without count columns here (COUNT_VARIANTS)
        block = default_count_block(data, mc)
        if block.shape[1] == 0:
            return out
        lag = np.asarray(hop_operator(ei, n) @ block)
        lag = leading_components(lag, min(lag.shape[1], scale_width(n, c, mc.output_scale_regions)))
        return scale_to_total_variance(append_scaled(append_scaled(out, block), lag), mc.output_variance)
    if name in ("odpc8", "odrec8"):  # the default with the OD rows' leading components appended
        from urbanrep.smoothing import scale_width

        out = written_from_config(trained, ei, mc, volumes)
        block = od_components(data, scale_width(n, c, 8))
        if name == "odrec8" and block.shape[1]:  # the block as a whole at k embedding columns' variance
            from urbanrep.position import column_variances

            target = float(np.mean(column_variances(out))) * block.shape[1]
            block = block * np.sqrt(target / max(float(block.var(0).sum()), 1e-12))
            return scale_to_total_variance(np.hstack([out, block]).astype(np.float32), mc.output_variance)
        return scale_to_total_variance(append_scaled(out, block), mc.output_variance)
    if name == "volzero":  # the default with a region without a modality's records at volume zero, not the mean
        from urbanrep.volumes import region_counts

        zero = zero_volumes(data, mc.volume_scales)
        out = written_from_config(trained, ei, mc, zero)
        return scale_to_total_variance(append_scaled(out, region_counts(data, data.modalities, "sqrt")),
                                       mc.output_variance)
    if name in ("logzero", "sqrtzero8", "sqrtzero8m", "sqrtzeromob", "sqrtzero-mob", "hellinger"):  # count columns on log1p / as PCs / as shares
        from urbanrep.volumes import region_counts

        out = written_from_config(trained, ei, mc, volumes)
        if name == "hellinger":
            block = hellinger_block(data)
        elif name == "sqrtzero8m":  # each modality's block as its own leading components
            parts = [region_counts(data, (m,), "sqrt") for m in data.modalities]
            block = np.hstack([leading_components(p, min(p.shape[1], max(1, n // 8))) for p in parts if p.shape[1]]
                              or [np.zeros((n, 0))])
        elif name == "sqrtzero-mob":  # every count column but mobility's (trip totals, as the volumes)
            block = region_counts(data, [m for m in data.modalities if m != "mobility"], "sqrt")
        elif name == "sqrtzeromob":  # the mobility block as all its principal components, the others as they are
            parts = [region_counts(data, (m,), "sqrt") for m in data.modalities]
            block = np.hstack([leading_components(p, p.shape[1]) if m == "mobility" and p.shape[1] else p
                               for m, p in zip(data.modalities, parts, strict=True)] or [np.zeros((n, 0))])
        else:
            block = region_counts(data, data.modalities, "log" if name == "logzero" else "sqrt")
            if name == "sqrtzero8":
                block = leading_components(block, min(block.shape[1], max(1, n // 8)))
        return scale_to_total_variance(append_scaled(out, block), mc.output_variance)
    if name == "effrank":  # the default's count columns, each modality's block at its effective rank's variance
        from urbanrep.volumes import counted_modalities, region_counts

        out = written_from_config(trained, ei, mc, volumes)
        parts = [region_counts(data, (m,), "sqrt", mc.output_counts_shares)
                 for m in counted_modalities(data.modalities, mc)]
        return scale_to_total_variance(append_by_effective_rank(out, [p for p in parts if p.shape[1]]),
                                       mc.output_variance)
    if name in ("border", "rook"):  # the default's neighbour means weighted by shared boundary length / rook edges only
        from urbanrep.smoothing import compress_scales

        lengths = border_lengths(regions, data, ei)
        weights = lengths if name == "border" else (lengths > 10.0).astype(np.float64)  # a corner: ~2 m of buffer
        hop = weighted_hop(ei, weights, n)
        scaled = neighbourhood_scales(smooth_over_neighbours(trained, hop, mc.output_smoothing), hop, mc.output_scales)
        out = append_position(compress_scales(scaled, c, scale_width(n, c, mc.output_scale_regions)), ei,
                              mc.output_position)
        return scale_to_total_variance(append_scaled(out, volumes), mc.output_variance)
    if name in ("posknn", "posmix"):  # positional columns of a centroid kNN graph (or of it and the adjacency)
        from urbanrep.graphs._spatial import symmetric_edges
        from urbanrep.position import laplacian_position, position_count

        knn = centroid_knn_edges(regions, data, POSITION_KNN)
        graph = knn if name == "posknn" else np.stack(symmetric_edges(np.r_[ei[0], knn[0]], np.r_[ei[1], knn[1]], n))
        out = neighbourhood_transform(trained, ei, mc.output_smoothing, mc.output_scales, mc.output_scale_regions)
        k = position_count(n, mc.output_position)
        if k:
            out = append_scaled(out, laplacian_position(graph, n, k))
        return scale_to_total_variance(append_scaled(out, volumes), mc.output_variance)
    if name == "untrained":  # the written embedding without anything learned: positional columns, volumes (counts after)
        from urbanrep.position import laplacian_position, position_count

        k = position_count(n, mc.output_position)
        out = laplacian_position(ei, n, k).astype(np.float32) if k else np.zeros((n, 0), np.float32)
        return scale_to_total_variance(append_scaled(out, volumes) if out.shape[1] else volumes.astype(np.float32),
                                       mc.output_variance)
    if name.startswith("moblog"):  # the default's count columns, mobility's as log1p counts (and its shares)
        from urbanrep.volumes import counted_modalities, region_counts

        out = written_from_config(trained, ei, mc, volumes)
        mods = counted_modalities(data.modalities, mc)
        parts = [region_counts(data, [m for m in mods if m != "mobility"], "sqrt")]
        if "mobility" in mods:
            parts.append(region_counts(data, ("mobility",), "log"))
            if name == "moblog+shares":
                parts.append(region_counts(data, ("mobility",), "sqrt", shares=("mobility",)))
        return scale_to_total_variance(append_scaled(out, np.hstack(parts)), mc.output_variance)
    if name == "mobshare":  # every count column, mobility's as the square root of its shares (round ac's candidate)
        from urbanrep.volumes import region_counts

        out = written_from_config(trained, ei, mc, volumes)
        block = region_counts(data, data.modalities, "sqrt", shares=("mobility",))
        return scale_to_total_variance(append_scaled(out, block), mc.output_variance)
    if name in ("sqrtclip", "sqrtzero"):  # square-root counts, z-scores clipped at 3 / a region without data counted 0
        out = written_from_config(trained, ei, mc, volumes)
        block = count_block(data, scale="sqrt", missing_as_zero=name == "sqrtzero")
        if name == "sqrtclip":
            block = np.clip(block / np.maximum(block.std(0), 1e-12), -3.0, 3.0)  # a constant column stays 0
            block = block - block.mean(0)
        return scale_to_total_variance(append_scaled(out, block), mc.output_variance)
    counts = re.fullmatch(r"(log|sqrt)?counts(8)?", name)
    if counts:  # the default with the regions' count columns appended
        out = written_from_config(trained, ei, mc, volumes)
        block = count_block(data, scale=counts.group(1) or "linear")
        if counts.group(2):
            block = leading_components(block, min(block.shape[1], max(1, n // 8)))
        return scale_to_total_variance(append_scaled(out, block), mc.output_variance)
    if name == "eqvar":  # the default with every column at the same variance (what a standardising probe sees)
        out = written_from_config(trained, ei, mc, volumes).astype(np.float64)
        sd = out.std(0)
        out = (out - out.mean(0)) / np.where(sd > 0, sd, 1.0)
        return scale_to_total_variance(out.astype(np.float32), mc.output_variance)
    if re.fullmatch(r"pc\d*", name):  # the default with its row written as principal component scores
        out = written_from_config(trained, ei, mc, volumes)
        row = out[:, :c]
        k = c if name == "pc" else scale_width(n, c, int(name[2:]))
        return np.hstack([leading_components(row, k), out[:, c:]]).astype(np.float32)
    boost = re.fullmatch(r"(vol|app)(\d+)", name)
    if boost:  # the volumes (``app``: and the count columns) at k times an embedding column's variance
        f = float(np.sqrt(int(boost.group(2))))
        base = written_from_config(trained, ei, mc, volumes)  # mc without count columns here
        out = base.astype(np.float64)
        out[:, out.shape[1] - volumes.shape[1]:] *= f
        if boost.group(1) == "app":  # the count columns as the default appends them, then boosted
            out = np.hstack([out, append_scaled(base, default_count_block(data, mc))[:, base.shape[1]:] * f])
        return scale_to_total_variance(out.astype(np.float32), mc.output_variance)
    if name.startswith("cons"):  # from the members side by side (``--model abl_concat_members``)
        return members_variant(name, trained, ei, mc, volumes)
    if name == "default" or name.startswith("flow"):
        out = written_from_config(trained, ei, mc, volumes)
        if name == "default":
            return out
        et = MODALITY_EDGE["mobility"]
        if et not in data.edge_types:
            raise SystemExit(f"transform_looks: {name} needs OD edges; the graph has no mobility")
        flows = flow_components(data[et].edge_index, getattr(data[et], "edge_weight", None), n,
                                int(name[4:])).numpy().astype(np.float64)
        return scale_to_total_variance(append_scaled(out, flows - flows.mean(0)), mc.output_variance)
    match = re.fullmatch(r"(bare|raw|s\.5|miss|miss\+s\.5|od|od-hop2)(?:\+(hops|hoprec|hopk|hopr|joint)(\d*))?", name)
    if match is None:
        raise SystemExit(f"transform_looks: unknown variant {name!r}; one of {', '.join(VARIANTS)}")
    row_kind, hops, k = match.groups()
    hop = hop_operator(ei, n)
    if row_kind.startswith("miss"):  # a region's row mixed with its neighbours' by the share of data it lacks
        share = missing_share(data)[:, None]
        if row_kind == "miss+s.5":
            share = 0.5 + 0.5 * share
        row = ((1.0 - share) * trained + share * np.asarray(hop @ trained)).astype(np.float32)
    else:
        share = mc.output_smoothing if row_kind.startswith("od") else 0.5 if row_kind == "s.5" else 0.0
        row = smooth_over_neighbours(trained, hop, share)
    blocks: list[np.ndarray] = []
    if hops or row_kind.startswith("od"):
        h1, h2 = np.split(neighbourhood_scales(row, hop, 2)[:, c:], 2, axis=1)
        if row_kind.startswith("od"):  # the default's blocks with the trip-weighted neighbour mean appended / for hop 2
            around = np.asarray(flow_neighbour_operator(data) @ row, np.float32)
            blocks = [h1, around] if row_kind == "od-hop2" else [h1, h2, around]
        else:
            if hops in ("hopr", "hoprec"):  # one component per k regions, as model.output_scale_regions
                k = str(scale_width(n, c, int(k)))
            blocks = ([h1, h2] if hops == "hops" else [leading_components(np.hstack([h1, h2]), int(k))]
                      if hops == "joint" else [low_rank(h1, int(k)), low_rank(h2, int(k))] if hops == "hoprec"
                      else [leading_components(h1, int(k)), leading_components(h2, int(k))])
    out = append_position(np.hstack([row, *blocks]).astype(np.float32), ei, mc.output_position)
    return scale_to_total_variance(append_scaled(out, volumes), mc.output_variance)


def thin_counts(bundle: Any, share: float, seed: int = 0) -> None:
    """Binomially thin every aggregate count of ``bundle`` in place to ``share`` of its value."""
    rng = np.random.default_rng(seed)
    for agg in bundle.aggregates.values():
        t = agg.table
        cols = ["value"] if agg.kind == "matrix" else [c for c in t.columns if c != "region_id"
                                                       and pd.api.types.is_numeric_dtype(t[c])]
        for c in cols:
            counts = np.round(t[c].to_numpy(np.float64)).clip(min=0).astype(np.int64)
            t[c] = rng.binomial(counts, share).astype(t[c].dtype)
        if agg.kind == "matrix":
            agg.table = t[t["value"] > 0].reset_index(drop=True)


def row_subset_score(emb: pd.DataFrame, bundle: Any, tasks: Sequence[str], subsets: Sequence[np.ndarray]) -> float:
    """Mean over ``subsets`` (row positions of ``emb``) of the standardised ``RidgeCV``'s shuffled 5-fold R²."""
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    targets = bundle.targets.assign(region_id=bundle.targets["region_id"].astype(str))
    emb = emb.set_axis(emb.index.astype(str))
    scores = []
    for rows in subsets:
        sub = emb.iloc[rows]
        for task in tasks:
            y_all = targets[targets["target"] == task].set_index("region_id")["value"]
            common = [i for i in sub.index if i in y_all.index]
            x, y = sub.loc[common].to_numpy(), y_all.loc[common].to_numpy(float)
            for split in range(3):
                probe = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 4, 30)))
                pred = cross_val_predict(probe, x, y, cv=KFold(5, shuffle=True, random_state=split))
                scores.append(1 - ((y - pred) ** 2).sum() / ((y - y.mean()) ** 2).sum())
    return float(np.mean(scores))


def look(args: argparse.Namespace, city: str) -> list[str]:
    """Score every variant on ``city``; one printed line per variant."""
    from urbanrep.graphs import GraphConfig, build_graph
    from urbanrep.network import ModelConfig

    bundle = load_city(CITIES[city], args.data_root)
    if args.thin < 1.0:
        thin_counts(bundle, args.thin)
    data, _ = build_graph(bundle, GraphConfig(modalities=tuple(args.modalities) if args.modalities else None))
    tasks, blocks, ids = scalar_tasks(city), spatial_blocks_for(len(bundle.region_ids)), list(data.region_ids)
    cache = args.out / "embeddings" / (city if args.thin >= 1.0 else f"{city}_thin{args.thin:g}")
    mc = model_variants()[args.model][1](ModelConfig())
    rows: dict[str, list[tuple[float, ...]]] = {}
    for seed in args.seeds:
        # the as-trained run only (shared with select_design's runs in the same cache); a thinned
        # graph has the city's name and shape, so it gets a cache of its own (``cache`` above)
        got = trained_run(data, *_variant_configs(args.model, seed, args.epochs, "cpu"), cache)
        assert got is not None
        trained = got[0].loc[ids].to_numpy(np.float32)
        rng = np.random.default_rng(seed)  # the same subsets for every variant
        subsets = [rng.choice(len(ids), args.rows, replace=False) for _ in range(3)] if args.rows else []
        for name in args.variants:
            emb = pd.DataFrame(written_variant(name, trained, data, mc, bundle.regions), index=ids)
            if args.rows:
                rows.setdefault(name, []).append((row_subset_score(emb, bundle, tasks, subsets),))
                continue
            shuffled = strict_scores(emb, bundle, tasks, args.strict_seeds)
            spatial = strict_scores(emb, bundle, tasks, args.strict_seeds, blocks)
            flows = flow_structure_agreement(emb, bundle) if "mobility" in data.modalities else None
            rows.setdefault(name, []).append((float(np.mean(list(shuffled.values()))),
                                              float(np.mean(list(spatial.values()))), paper_score(emb, bundle, tasks),
                                              np.nan if flows is None else flows, *shuffled.values()))
    where = f"{city}{'' if args.model == 'urbanrep' else ' ' + args.model} ({'+'.join(data.modalities)}{f', counts x{args.thin:g}' if args.thin < 1 else ''})"
    lines = []
    for name, got_rows in rows.items():
        a = np.array(got_rows)
        if args.rows:
            lines.append(f"{where} {name}: {args.rows} regions, shuffled R² {a[:, 0].mean():.3f} ± {a[:, 0].std():.3f}")
            continue
        score = a[:, :2].mean(1)
        lines.append(f"{where} {name}: score {score.mean():.3f} ± {score.std():.3f} (shuffled {a[:, 0].mean():.3f}, "
                     f"spatial blocks {a[:, 1].mean():.3f}, paper {a[:, 2].mean():.3f}"
                     + ("" if np.isnan(a[:, 3]).all() else f", flow agreement {a[:, 3].mean():.3f}")
                     + "; shuffled per task "
                     + ", ".join(f"{t} {v:.3f}" for t, v in zip(tasks, a[:, 4:].mean(0), strict=True)) + ")")
    return lines


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cities", nargs="+", choices=[c for c in sorted(CITIES) if c not in HELD_OUT],
                   default=list(DEV_CITIES), help="development cities only (the held-out ones are refused)")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=["default", "bare", "raw+hops", "s.5+hopk8"])
    p.add_argument("--model", default="urbanrep", choices=sorted(model_variants()),
                   help="the learned variant whose as-trained runs the variants transform (default: the default)")
    p.add_argument("--thin", type=float, default=1.0, help="share of every count kept (binomial thinning)")
    p.add_argument("--modalities", nargs="+", default=None)
    p.add_argument("--rows", type=int, default=0, help="score on random subsets of this many regions")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--strict-seeds", type=int, default=5)
    p.add_argument("--out", type=Path, required=True, help="cache folder (select_design's --out reuses its runs)")
    p.add_argument("--data-root", default=None)
    args = p.parse_args(argv)
    if not 0.0 < args.thin <= 1.0:
        p.error(f"--thin must be in (0, 1], got {args.thin}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    for city in args.cities:
        for line in look(args, city):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
