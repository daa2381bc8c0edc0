"""Spatial helpers shared by the builders: metric CRS, point location, exact kNN, edge lists.

Every helper is vectorised over points / regions (chunks bound memory, never one Python
iteration per region). Ties (equal distances, points on a shared boundary) are broken by a
*canonical rank* of the regions (their order when sorted by ``region_id``), so that permuting the
regions of a bundle permutes the graph and changes nothing else.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyproj
import shapely
from scipy.spatial import cKDTree

from urbanrep.errors import GraphError

log = logging.getLogger(__name__)

#: At most this many ids are listed in reports (the count is always given).
MAX_LISTED = 20
#: Feature dimension above which exact kNN uses brute force instead of a k-d tree.
_KD_TREE_MAX_DIM = 32
#: Serialises :meth:`RegionIndex.warm` (threads that warm the same index at once wait for one).
_WARM_LOCK = threading.Lock()


@dataclass
class Edges:
    """A weighted edge list in numpy form (``[2, E]`` int64, ``[E]`` float32, optional ``[E, S]``)."""

    index: np.ndarray = field(default_factory=lambda: np.zeros((2, 0), dtype=np.int64))
    weight: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    attr: np.ndarray | None = None

    @property
    def num_edges(self) -> int:
        return int(self.index.shape[1])


@dataclass
class ModalityResult:
    """What a modality builder returns.

    Attributes:
        x: float32 ``[N, F]`` region features (zero rows where ``mask`` is False).
        mask: bool ``[N]``, True where the region has data for the modality.
        edges: The modality's region-region edges (``None`` when it contributes none).
        feature_names: ``F`` names, one per column of ``x``.
        report: JSON-ready counts: sources, dropped records, masked regions.
    """

    x: np.ndarray
    mask: np.ndarray
    edges: Edges | None
    feature_names: list[str]
    report: dict[str, Any]


def listed(ids: Any) -> list[Any]:
    """The first :data:`MAX_LISTED` ids as JSON-ready Python values."""
    arr = np.asarray(ids)[:MAX_LISTED]
    return arr.tolist()


def resolve_metric_crs(regions: gpd.GeoDataFrame, metric_crs: str | None) -> pyproj.CRS:
    """The CRS the ETL works in.

    ``metric_crs`` when given; else the regions' CRS when it is projected with metre units;
    else the UTM zone of the regions (``estimate_utm_crs``).
    """
    if regions.crs is None:
        raise GraphError("the regions layer has no CRS; validate the bundle first (urbanrep validate)")
    if metric_crs is not None:
        try:
            crs = pyproj.CRS.from_user_input(metric_crs)
        except pyproj.exceptions.CRSError as exc:
            raise GraphError(f"GraphConfig.metric_crs={metric_crs!r} is not a CRS pyproj knows: {exc}") from exc
        if not crs.is_projected:
            raise GraphError(f"GraphConfig.metric_crs={metric_crs!r} is not projected; give a metric CRS such as a UTM zone")
        return crs
    crs = pyproj.CRS.from_user_input(regions.crs)
    if crs.is_projected and all(ax.unit_name in ("metre", "meter") for ax in crs.axis_info[:2]):
        return crs
    return pyproj.CRS.from_user_input(regions.estimate_utm_crs())


def canonical_rank(region_ids: pd.Index | np.ndarray | list[Any]) -> np.ndarray:
    """Rank of each region when regions are sorted by id (int64 ``[N]``); bundle order if unsortable."""
    ids = pd.Index(region_ids)
    try:
        order = np.asarray(ids.argsort(), dtype=np.int64)
    except TypeError:
        log.warning("region ids of mixed types cannot be sorted; ties are broken by bundle order")
        order = np.arange(len(ids), dtype=np.int64)
    rank = np.empty(len(ids), dtype=np.int64)
    rank[order] = np.arange(len(ids), dtype=np.int64)
    return rank


class RegionIndex:
    """A spatial index over region polygons that locates points (vectorised, chunked).

    Args:
        polygons: ``N`` region polygons in the metric CRS (bundle order).
        rank: Canonical rank ``[N]``; a point on a shared boundary goes to the lowest rank.
        chunk: Points located per chunk.
    """

    def __init__(self, polygons: np.ndarray, rank: np.ndarray, chunk: int = 1_000_000) -> None:
        self.polygons = np.asarray(polygons, dtype=object)
        shapely.prepare(self.polygons)
        self.tree = shapely.STRtree(self.polygons)
        self.rank = np.asarray(rank, dtype=np.int64)
        self.by_rank = np.argsort(self.rank, kind="stable")  # rank -> region position
        self.chunk = int(chunk)
        #: Where :meth:`locate` runs: ``None`` in-process, else an :class:`urbanrep.engine.Engine`
        #: (set by ``build_graph`` from ``GraphConfig.engine``; every engine gives identical codes).
        self.engine: Any = None
        #: True once :meth:`warm` has built every lazily built GEOS structure (then the index is
        #: read-only and safe to share between threads).
        self.warmed = False

    def warm(self) -> RegionIndex:
        """Build now every GEOS structure that :meth:`locate_local` would build lazily; returns ``self``.

        A prepared polygon (``shapely.prepare``) builds its point-in-area locator on first use
        (GEOS ``PreparedPolygon::getPointLocator``: a simple locator on the first test, an indexed
        one, whose interval tree is itself built on its first query, from the second on), and that
        lazy initialisation is not thread-safe: two threads testing points against the same
        polygon for the first time can both build it and free each other's copy (native heap
        corruption, ``free(): unaligned chunk detected in tcache 2``). Hence GEOS' rule that a
        prepared geometry must not be used from several threads; after ``warm()`` it is only
        read. Call it before sharing one index between threads (the Dask engine does); it is
        idempotent and serialised, so threads may all call it. Single-threaded use does not
        need it. Costs a few point-in-polygon tests
        per region (~2 s and ~0.45 GB for 1M Voronoi cells, which a large layer would build
        lazily anyway) and changes no result.
        """
        if self.warmed:
            return self
        with _WARM_LOCK:
            if not self.warmed:
                self._warm()
        return self

    def _warm(self) -> None:
        if len(self.polygons):
            # The STRtree is built on construction by shapely 2; a query makes sure of it.
            self.tree.query(shapely.points(0.0, 0.0))
            # The centre of each polygon's bounding box passes the envelope test, so every test
            # reaches the polygon's point locator. Three rounds: simple locator, indexed locator +
            # its interval index, and one more use of the finished index.
            bounds = shapely.bounds(self.polygons)
            cx, cy = (bounds[:, 0] + bounds[:, 2]) / 2, (bounds[:, 1] + bounds[:, 3]) / 2
            for _ in range(3):
                shapely.intersects_xy(self.polygons, cx, cy)
        self.warmed = True

    def locate(self, points: Any) -> np.ndarray:
        """Region position of each point (int64 ``[P]``; -1 outside every region or missing).

        Runs on :attr:`engine` when one is set, else :meth:`locate_local`.
        """
        if self.engine is not None:
            return np.asarray(self.engine.locate(self, points), dtype=np.int64)
        return self.locate_local(points)

    def locate_local(self, points: Any) -> np.ndarray:
        """:meth:`locate` in this process.

        Bounding-box candidates from the tree, then an exact point-in-polygon test (prepared
        polygons); a point in several regions (on a shared boundary) goes to the lowest rank.
        """
        pts = np.asarray(points.values if hasattr(points, "values") else points, dtype=object)
        out = np.full(len(pts), -1, dtype=np.int64)
        if not len(pts):
            return out
        none = np.iinfo(np.int64).max
        x, y = np.full(len(pts), np.nan), np.full(len(pts), np.nan)
        real = ~(shapely.is_missing(pts) | shapely.is_empty(pts))
        x[real], y[real] = shapely.get_x(pts[real]), shapely.get_y(pts[real])
        # Points in Z-order: neighbouring points hit the same polygons and tree nodes, which
        # makes the lookups cache-friendly (about 40 % faster on large layers).
        order = morton_order(x, y)
        for start in range(0, len(pts), self.chunk):
            sel = order[start:start + self.chunk]
            i, j = self.tree.query(pts[sel])  # bounding-box candidates
            if not len(i):
                continue
            ok = shapely.intersects_xy(self.polygons[j], x[sel[i]], y[sel[i]])
            i, j = i[ok], j[ok]
            best = np.full(len(sel), none, dtype=np.int64)
            np.minimum.at(best, i, self.rank[j])
            hit = np.flatnonzero(best != none)
            out[sel[hit]] = self.by_rank[best[hit]]
        return out


def _spread_bits(v: np.ndarray) -> np.ndarray:
    """Interleave zeros between the 16 low bits of ``v`` (uint64)."""
    v = v.astype(np.uint64) & np.uint64(0xFFFF)
    for shift, mask in ((8, 0x00FF00FF), (4, 0x0F0F0F0F), (2, 0x33333333), (1, 0x55555555)):
        v = (v | (v << np.uint64(shift))) & np.uint64(mask)
    return v


def morton_order(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Order of points along a Z-order curve on a 65536 x 65536 grid (NaN coordinates last).

    Args:
        x: float ``[P]``.
        y: float ``[P]``.

    Returns:
        int64 ``[P]`` permutation.
    """
    finite = np.isfinite(x) & np.isfinite(y)
    if not finite.any():
        return np.arange(len(x), dtype=np.int64)
    x0, x1 = float(x[finite].min()), float(x[finite].max())
    y0, y1 = float(y[finite].min()), float(y[finite].max())
    span = max(x1 - x0, y1 - y0, 1e-9)
    gx = np.where(finite, (np.nan_to_num(x, nan=x0, posinf=x0, neginf=x0) - x0) / span * 65535, 0).astype(np.int64)
    gy = np.where(finite, (np.nan_to_num(y, nan=y0, posinf=y0, neginf=y0) - y0) / span * 65535, 0).astype(np.int64)
    key = _spread_bits(gx) | (_spread_bits(gy) << np.uint64(1))
    key[~finite] = np.iinfo(np.uint64).max
    return np.argsort(key).astype(np.int64)


def knn_pairs(x: np.ndarray, k: int, rank: np.ndarray, decimals: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact k nearest neighbours (Euclidean) of every row of ``x``, self excluded.

    Ties are broken by ``rank`` (distances rounded to ``decimals``), so the result does not
    depend on row order. Rows whose tie group reaches past the candidates fetched are
    re-queried with twice as many candidates until resolved.

    Args:
        x: float ``[n, d]`` points.
        k: Neighbours per row (capped at ``n - 1``).
        rank: int64 ``[n]`` tie-break key, unique.
        decimals: Distances are rounded to this many decimals before comparing.

    Returns:
        ``(rows, cols, dist)`` of length ``n * k``: ``cols`` is a neighbour of ``rows``.
    """
    x = np.ascontiguousarray(x, dtype=np.float64)
    n = len(x)
    k = min(int(k), n - 1)
    empty = np.zeros(0, np.int64)
    if k <= 0:
        return empty, empty, np.zeros(0)
    if x.shape[1] <= _KD_TREE_MAX_DIM:
        tree = cKDTree(x)

        def query(q: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
            d, i = tree.query(q, k=kk)
            return d.reshape(len(q), kk), i.reshape(len(q), kk)
    else:
        sq = np.einsum("ij,ij->i", x, x)

        def query(q: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
            # Brute force in row blocks of ~64 MB: squared distances, then the kk smallest.
            block = max(64, int(8e6 // max(n, 1)))
            ds, js = [], []
            for s in range(0, len(q), block):
                qb = q[s:s + block]
                d2 = np.maximum(np.einsum("ij,ij->i", qb, qb)[:, None] + sq[None, :] - 2.0 * (qb @ x.T), 0.0)
                j = np.argpartition(d2, kk - 1, axis=1)[:, :kk] if kk < n else np.tile(np.arange(n), (len(qb), 1))
                ds.append(np.sqrt(np.take_along_axis(d2, j, axis=1)))
                js.append(j)
            return np.concatenate(ds), np.concatenate(js)

    rows_out, cols_out, dist_out = [], [], []
    todo = np.arange(n, dtype=np.int64)
    kk = min(n, k + 5)
    while len(todo):
        d, idx = query(x[todo], kk)
        d = np.round(d, decimals)
        d[idx == todo[:, None]] = np.inf  # self
        t = len(todo)
        row = np.repeat(np.arange(t), kk)
        order = np.lexsort((rank[idx].ravel(), d.ravel(), row))
        d = d.ravel()[order].reshape(t, kk)
        idx = idx.ravel()[order].reshape(t, kk)
        finite_max = np.where(np.isfinite(d), d, -np.inf).max(axis=1)
        resolved = (d[:, k - 1] < finite_max) | (kk >= n)
        sel = np.flatnonzero(resolved)
        rows_out.append(np.repeat(todo[sel], k))
        cols_out.append(idx[sel, :k].ravel())
        dist_out.append(d[sel, :k].ravel())
        todo = todo[~resolved]
        kk = min(n, 2 * kk)
    return np.concatenate(rows_out), np.concatenate(cols_out).astype(np.int64), np.concatenate(dist_out)


def symmetric_edges(rows: np.ndarray, cols: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Union of ``rows -> cols`` and its reverse, without self loops, sorted by (source, target)."""
    src = np.concatenate([rows, cols]).astype(np.int64)
    dst = np.concatenate([cols, rows]).astype(np.int64)
    keep = src != dst
    key = np.sort(src[keep] * n + dst[keep])
    key = key[np.r_[True, key[1:] != key[:-1]]] if len(key) else key
    return key // n, key % n


def pairwise_region_codes(a: np.ndarray, b: np.ndarray, n: int, weights: np.ndarray | None = None,
                          symmetric: bool = False) -> Edges:
    """Count (or sum ``weights`` of) region pairs ``a -> b`` as weighted edges, self pairs dropped."""
    keep = (a >= 0) & (b >= 0) & (a != b)
    src, dst = a[keep], b[keep]
    w = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=np.float64)[keep]
    if symmetric:
        src, dst = np.concatenate([src, dst]), np.concatenate([dst, src])
        w = np.concatenate([w, w])
    key, inv = np.unique(src * n + dst, return_inverse=True)
    total = np.bincount(inv, weights=w, minlength=len(key))
    return Edges(np.stack([key // n, key % n]).astype(np.int64), total.astype(np.float32))


def feature_matrix(values: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Stack a column of per-row vectors (lists/arrays of floats) into float32 ``[M, D]``.

    Missing rows (``None``) become zero rows with ``ok`` False; vectors of unequal length or
    with NaN/inf raise :class:`GraphError` naming the rows.

    Returns:
        ``(features [M, D] float32, ok [M] bool)``.
    """
    col = np.empty(len(values), dtype=object)
    col[:] = list(values)
    ok = np.fromiter((v is not None and not (np.isscalar(v) and pd.isna(v)) for v in col), dtype=bool,
                     count=len(col))
    if not ok.any():
        raise GraphError(f"{where}: every 'feature' value is missing; give feature vectors or image paths")
    lengths = np.fromiter((len(v) for v in col[ok]), dtype=np.int64, count=int(ok.sum()))
    bad = np.flatnonzero(ok)[lengths != lengths[0]]
    if len(bad) or lengths[0] <= 0:
        raise GraphError(
            f"{where}: 'feature' vectors must all have the same non-zero length; rows {listed(bad)} differ "
            f"from the first (length {lengths[0]}); fix or drop those rows"
        )
    arr = np.zeros((len(col), int(lengths[0])), dtype=np.float32)
    arr[ok] = np.stack(col[ok]).astype(np.float32)
    finite = np.isfinite(arr).all(axis=1)
    if not finite.all():
        raise GraphError(f"{where}: 'feature' vectors have NaN/inf at rows {listed(np.flatnonzero(~finite))}; "
                         "fix or drop those rows")
    return arr, ok
