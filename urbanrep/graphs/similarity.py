"""Cosine-similarity kNN graphs over regions (POI mix, land use, remote sensing) or images.

Rows are L2-normalised, so Euclidean kNN on the unit vectors is exactly cosine kNN.

* Up to ``exact_max`` rows the search is exact (k-d tree for up to 32 dimensions, brute force
  above) and ties are broken by the canonical rank, which makes the graph independent of row
  order.
* Above ``exact_max`` rows and :data:`EXACT_KNN_DIM` dimensions exact search is quadratic in
  practice (feature spaces of 10+ dimensions defeat k-d trees), so :func:`approx_knn_pairs` is
  used: a seeded random-projection
  forest proposes candidates and neighbour-of-neighbour rounds (NN-descent) refine them
  (float32 distances). It runs on the rows sorted by canonical rank, so it is deterministic and
  does not depend on row order either; recall is typically above 95 %.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from urbanrep.graphs._spatial import Edges, knn_pairs, symmetric_edges

#: Default ``GraphConfig.knn_exact_max``: above this many rows similarity kNN is approximate.
EXACT_KNN_MAX = 5_000
#: Up to this many dimensions a k-d tree stays fast at any size, so the search is always exact.
EXACT_KNN_DIM = 8
#: Float64 values gathered at once when scoring candidate pairs (bounds peak memory, ~128 MB).
_GATHER_FLOATS = 16_000_000


def _pair_dist(x: np.ndarray, sq: np.ndarray, rows: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Euclidean distances ``[R, C]`` between ``x[rows]`` and ``x[cand]`` (-1 in ``cand`` -> inf)."""
    r, c = cand.shape
    out = np.empty((r, c), dtype=x.dtype)
    block = max(1, _GATHER_FLOATS // max(1, c * x.shape[1]))
    for s in range(0, r, block):
        cb = cand[s:s + block]
        safe = np.maximum(cb, 0)
        xr = x[rows[s:s + block]]
        dot = np.matmul(x[safe], xr[:, :, None])[:, :, 0]
        d2 = sq[rows[s:s + block], None] + sq[safe] - 2.0 * dot
        out[s:s + block] = np.where(cb >= 0, np.sqrt(np.maximum(d2, 0.0)), np.inf)
    return out


def _dedupe(cand: np.ndarray, self_rows: np.ndarray) -> np.ndarray:
    """Each row's distinct candidates (the row itself left out), -1 padded at the front.

    Columns that are -1 in every row are dropped (neighbours of neighbours repeat a lot).
    """
    cs = np.sort(cand, axis=1)
    dup = np.zeros(cs.shape, dtype=bool)
    dup[:, 1:] = cs[:, 1:] == cs[:, :-1]
    dup |= cs == self_rows[:, None]
    cs[dup] = -1
    cs.sort(axis=1)
    width = max(1, int((cs >= 0).sum(axis=1).max()))
    return cs[:, cs.shape[1] - width:]


def _best_k(cand: np.ndarray, dist: np.ndarray, k: int, decimals: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the ``k`` best candidates by (rounded distance, index).

    Args:
        cand: int64 ``[R, C]`` distinct candidate indices per row (-1 = none).
        dist: float ``[R, C]`` their distances (inf for -1).

    Returns:
        ``(best [R, k] int64 (-1 where a row has fewer candidates), dist [R, k])``.
    """
    r, c = cand.shape
    kk = min(k, c)
    ds = np.round(dist, decimals)
    kth = np.partition(ds, kk - 1, axis=1)[:, kk - 1]
    sr, sc = np.nonzero(ds <= kth[:, None])  # at least kk per row; ties at the k-th included
    order = np.lexsort((cand[sr, sc], ds[sr, sc], sr))
    sr, sc = sr[order], sc[order]
    pos = np.arange(len(sr)) - np.searchsorted(sr, np.arange(r))[sr]
    keep = pos < kk
    sr, sc, pos = sr[keep], sc[keep], pos[keep]
    best = np.full((r, kk), -1, dtype=np.int64)
    best_d = np.full((r, kk), np.inf)
    finite = np.isfinite(ds[sr, sc])
    best[sr[finite], pos[finite]] = cand[sr[finite], sc[finite]]
    best_d[sr[finite], pos[finite]] = dist[sr[finite], sc[finite]]
    return best, best_d


def _score(x: np.ndarray, sq: np.ndarray, cand: np.ndarray, k: int, decimals: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_best_k` of every row's candidates, by row blocks (bounded memory)."""
    n, c = cand.shape
    best = np.full((n, k), -1, dtype=np.int64)
    dist = np.full((n, k), np.inf)
    block = max(1, _GATHER_FLOATS // max(1, 4 * c))
    for s in range(0, n, block):
        rows = np.arange(s, min(n, s + block))
        cb = _dedupe(cand[rows], rows)
        b, d = _best_k(cb, _pair_dist(x, sq, rows, cb), k, decimals)
        best[rows, :b.shape[1]], dist[rows, :b.shape[1]] = b, d
    return best, dist


def _forest_candidates(x: np.ndarray, sq: np.ndarray, k: int, trees: int, leaf_size: int,
                       rng: np.random.Generator) -> np.ndarray:
    """``k`` nearest rows within the leaf of each random-projection tree (``[n, trees * k]``, -1 pads)."""
    n, dim = x.shape
    depth = max(0, int(np.ceil(np.log2(n / leaf_size))))
    out = []
    for _ in range(trees):
        proj = x @ rng.standard_normal((dim, depth)) if depth else np.zeros((n, 0))
        node = np.zeros(n, dtype=np.int64)
        for level in range(depth):
            # Sort by (node, projection) with one stable argsort of a combined float key.
            p = proj[:, level]
            frac = (p - p.min()) / max(float(p.max() - p.min()), 1e-300) * 0.5
            order = np.argsort(node + frac, kind="stable")
            sorted_node = node[order]
            start = np.flatnonzero(np.r_[True, sorted_node[1:] != sorted_node[:-1]])
            size = np.diff(np.r_[start, n])
            group = np.repeat(np.arange(len(start)), size)
            within = np.arange(n) - start[group]
            right = within >= size[group] // 2
            node[order] = 2 * sorted_node + right
        order = np.argsort(node, kind="stable")
        sorted_node = node[order]
        start = np.flatnonzero(np.r_[True, sorted_node[1:] != sorted_node[:-1]])
        size = np.diff(np.r_[start, n])
        group = np.repeat(np.arange(len(start)), size)
        within = np.arange(n) - start[group]
        lmax = int(size.max())
        leaves = np.full((len(start), lmax), -1, dtype=np.int64)
        leaves[group, within] = order
        # Within-leaf distances, a block of leaves at a time.
        cand = np.full((n, k), -1, dtype=np.int64)
        block = max(1, _GATHER_FLOATS // max(1, lmax * max(lmax, dim)))
        for s in range(0, len(leaves), block):
            lv = leaves[s:s + block]
            safe = np.maximum(lv, 0)
            xl = x[safe]
            d2 = sq[safe][:, :, None] + sq[safe][:, None, :] - 2.0 * np.matmul(xl, xl.transpose(0, 2, 1))
            bad = (lv[:, :, None] < 0) | (lv[:, None, :] < 0) | np.eye(lmax, dtype=bool)[None]
            d2[bad] = np.inf
            kk = min(k, lmax - 1)
            if kk <= 0:
                continue
            part = np.argpartition(d2, kk - 1, axis=2)[:, :, :kk]
            nb = np.take_along_axis(np.broadcast_to(lv[:, None, :], d2.shape), part, axis=2)
            nb = np.where(np.isfinite(np.take_along_axis(d2, part, axis=2)), nb, -1)
            valid = lv >= 0
            cand[lv[valid], :kk] = nb[valid]
        out.append(cand)
    return np.hstack(out)


def approx_knn_pairs(x: np.ndarray, k: int, rank: np.ndarray, decimals: int, *, trees: int = 6,
                     leaf_size: int = 48, rounds: int = 2, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Approximate k nearest neighbours (Euclidean) of every row, self excluded.

    A random-projection forest (``trees`` trees, leaves of about ``leaf_size`` rows) gives
    candidates; each round then scores the neighbours of neighbours and the reverse neighbours
    and keeps the ``k`` best (NN-descent). Distances are computed in float32, ties broken by
    ``rank``. The rows are processed in canonical (``rank``) order with a generator seeded by ``seed``,
    so the result is deterministic and permutes with the rows.

    Args:
        x: float ``[n, d]`` points.
        k: Neighbours per row (capped at ``n - 1``).
        rank: int64 ``[n]`` unique tie-break key.
        decimals: Distances are rounded to this many decimals before comparing.

    Returns:
        ``(rows, cols, dist)`` as :func:`urbanrep.graphs._spatial.knn_pairs` (``n * k`` pairs).
    """
    n = len(x)
    k = min(int(k), n - 1)
    empty = np.zeros(0, np.int64)
    if k <= 0:
        return empty, empty, np.zeros(0)
    canon = np.argsort(rank, kind="stable")  # canonical position -> row
    xc = np.ascontiguousarray(np.asarray(x, dtype=np.float32)[canon])  # float32 halves memory traffic
    sq = np.einsum("ij,ij->i", xc, xc)
    rng = np.random.default_rng(seed)
    every = np.arange(n)
    nbr, dist = _score(xc, sq, _forest_candidates(xc, sq, k, trees, leaf_size, rng), k, decimals)
    for _ in range(rounds):
        # Reverse neighbours: up to k rows that list each row, the closest first.
        src = np.repeat(every, k)
        dst = nbr.ravel()
        ok = dst >= 0
        src, dst, dd = src[ok], dst[ok], dist.ravel()[ok]
        order = np.lexsort((src, dd, dst))
        src, dst = src[order], dst[order]
        start = np.searchsorted(dst, every)
        pos = np.arange(len(dst)) - start[dst]
        keep = pos < k
        rev = np.full((n, k), -1, dtype=np.int64)
        rev[dst[keep], pos[keep]] = src[keep]
        both = np.hstack([nbr, rev])
        hop = np.where(both[:, :, None] >= 0, nbr[np.maximum(both, 0)], -1).reshape(n, -1)
        cand = np.hstack([both, hop])
        new, new_dist = _score(xc, sq, cand, k, decimals)
        if np.array_equal(new, nbr):
            break
        nbr, dist = new, new_dist
    ok = nbr >= 0
    rows = np.repeat(every, k).reshape(n, k)[ok]
    return canon[rows], canon[nbr[ok]], dist[ok]


def cosine_knn_graph(features: np.ndarray, mask: np.ndarray, k: int, rank: np.ndarray,
                     exact_max: int = EXACT_KNN_MAX, seed: int = 0) -> tuple[Edges, dict[str, Any]]:
    """Symmetric kNN graph on cosine similarity; weight = cosine similarity.

    Only rows with ``mask`` True and a non-zero vector take part; the others get no edges.

    Args:
        features: ``[N, F]`` vectors (e.g. POI counts, land-use shares, image features).
        mask: bool ``[N]``.
        k: Neighbours per node (before symmetrisation; capped at the number of nodes - 1).
        rank: Canonical tie-break rank ``[N]``.
        exact_max: Exact search up to this many rows (or :data:`EXACT_KNN_DIM` dimensions),
            :func:`approx_knn_pairs` above.
        seed: Seed of the approximate search.

    Returns:
        The edges (over all ``N`` nodes) and a report (``nodes``, ``zero_vectors``, ``exact``).
    """
    feats = np.asarray(features, dtype=np.float64)
    n = len(feats)
    norm = np.linalg.norm(feats, axis=1)
    use = np.flatnonzero(np.asarray(mask, dtype=bool) & (norm > 0))
    exact = len(use) <= exact_max or feats.shape[1] <= EXACT_KNN_DIM
    report = {"nodes": int(len(use)), "zero_vectors": int((np.asarray(mask, bool) & (norm == 0)).sum()),
              "exact": bool(exact)}
    if len(use) < 2:
        return Edges(), report
    unit = feats[use] / norm[use, None]
    if exact:
        r, c, _ = knn_pairs(unit, k, rank[use], decimals=7)
    else:
        r, c, _ = approx_knn_pairs(unit, k, rank[use], decimals=7, seed=seed)
    src, dst = symmetric_edges(use[r], use[c], n)
    sim = np.einsum("ij,ij->i", feats[src], feats[dst]) / (norm[src] * norm[dst])
    return Edges(np.stack([src, dst]), sim.astype(np.float32)), report
