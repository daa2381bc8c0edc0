"""The engine interface and the reducers both engines share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.parquet as pq
import shapely

if TYPE_CHECKING:
    from urbanrep.graphs._spatial import RegionIndex


def point_coords(points: Any) -> tuple[np.ndarray, np.ndarray]:
    """``x``, ``y`` float64 ``[P]`` of point geometries (NaN where missing or empty)."""
    pts = np.asarray(points.values if hasattr(points, "values") else points, dtype=object)
    x, y = np.full(len(pts), np.nan), np.full(len(pts), np.nan)
    if len(pts):
        real = ~(shapely.is_missing(pts) | shapely.is_empty(pts))
        x[real], y[real] = shapely.get_x(pts[real]), shapely.get_y(pts[real])
    return x, y


def locate_xy(index: RegionIndex, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Region position of the points ``(x, y)`` (int64; -1 outside / NaN), in-process."""
    out = np.full(len(x), -1, dtype=np.int64)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.any():
        out[ok] = index.locate_local(shapely.points(x[ok], y[ok]))
    return out


def count_by_region(codes: np.ndarray, num_regions: int, categories: np.ndarray | None = None,
                    num_categories: int = 1, weights: np.ndarray | None = None) -> np.ndarray:
    """Counts (or summed ``weights``) per region and category, float64 ``[N, C]``; -1 codes skipped."""
    if categories is None:
        ok = codes >= 0
        key = codes[ok]
    else:
        ok = (codes >= 0) & (categories >= 0)
        key = codes[ok] * num_categories + categories[ok]
    w = None if weights is None else np.asarray(weights, dtype=np.float64)[ok]
    out = np.bincount(key, weights=w, minlength=num_regions * num_categories)
    return out.astype(np.float64).reshape(num_regions, num_categories)


def od_counts(origin: np.ndarray, dest: np.ndarray, num_regions: int,
              weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sparse OD sum: ``(index [2, E] int64 sorted by (o, d), weight [E] float64)``; -1 codes skipped."""
    ok = (origin >= 0) & (dest >= 0)
    key = origin[ok] * num_regions + dest[ok]
    w = np.ones(len(key)) if weights is None else np.asarray(weights, dtype=np.float64)[ok]
    uniq, inv = np.unique(key, return_inverse=True)
    total = np.bincount(inv, weights=w, minlength=len(uniq))
    return np.stack([uniq // num_regions, uniq % num_regions]).astype(np.int64), total


def read_points(batch: Any, geometry: str | Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Point coordinates of one Parquet batch: a WKB geometry column or an ``(x, y)`` column pair."""
    if isinstance(geometry, str):
        wkb = np.asarray(batch.column(geometry).to_numpy(zero_copy_only=False), dtype=object)
        return point_coords(shapely.from_wkb(wkb))
    xcol, ycol = geometry
    return (np.asarray(batch.column(xcol).to_numpy(zero_copy_only=False), dtype=np.float64),
            np.asarray(batch.column(ycol).to_numpy(zero_copy_only=False), dtype=np.float64))


def row_groups(path: str | Path) -> int:
    """Number of row groups of a Parquet file (the unit a layer is read in)."""
    return int(pq.ParquetFile(path).num_row_groups)


class Engine(ABC):
    """Runs the point join and the partitioned reducers; every engine returns identical arrays."""

    name = "abstract"

    @abstractmethod
    def locate(self, index: RegionIndex, points: Any) -> np.ndarray:
        """Region position of each point (int64 ``[P]``, -1 outside every region or missing)."""

    def locate_parquet(self, index: RegionIndex, path: str | Path,
                       geometry: str | Sequence[str] = "geometry") -> np.ndarray:
        """:meth:`locate` over a Parquet point layer read by row groups (file order kept).

        ``geometry`` names a WKB point column, or an ``(x, y)`` pair of coordinate columns, in
        the index's CRS.
        """
        parts = dict(self.map_parquet(index, path, point_columns(geometry), partial(_locate_group, geometry)))
        return np.concatenate([parts[i] for i in sorted(parts)]) if parts else np.zeros(0, np.int64)

    def count_parquet(self, index: RegionIndex, path: str | Path, num_regions: int,
                      geometry: str | Sequence[str] = "geometry", category: str | None = None,
                      categories: Sequence[Any] | None = None) -> np.ndarray:
        """Per-region (x category) point counts of a Parquet layer, float64 ``[N, C]``.

        Each row group is located and reduced on its own and the partial counts are summed,
        so memory stays ``O(N x C)`` plus one row group. ``categories`` fixes the column
        order (``C = len(categories)``, rows with other values are skipped); without
        ``category`` there is one column.
        """
        cats = list(categories) if categories is not None else None
        total = np.zeros((num_regions, len(cats or []) if category else 1))
        count = partial(_count_group, num_regions, geometry, category, cats)
        for part in self.map_parquet(index, path, point_columns(geometry, category), count):
            total += part  # integer counts in float64: the order partial sums arrive in does not matter
        return total

    @abstractmethod
    def map_parquet(self, index: RegionIndex, path: str | Path, columns: Sequence[str],
                    fn: Callable[[RegionIndex, Any, int], Any]) -> Iterator[Any]:
        """Run ``fn(index, table, i)`` on every row group ``i`` of a Parquet file; yield the results.

        The generic partitioned reducer behind :meth:`count_parquet` and the graph builders'
        larger-than-memory paths: each row group (only ``columns``) is read where ``fn`` runs and
        only ``fn``'s (small, reduced) result travels back. Results arrive in no particular order
        (file order in-process, completion order on Dask), so callers combine them with an
        order-independent reduction. ``fn`` must be picklable for remote workers (a module-level
        function or a :func:`functools.partial` of one).
        """

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op in-process
        """Release workers / clusters the engine started (no-op in-process)."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def count_batch(index: RegionIndex, batch: Any, num_regions: int, geometry: str | Sequence[str],
                category: str | None, categories: Sequence[Any] | None) -> np.ndarray:
    """Counts of one Parquet batch (shared by both engines, so partial results are identical)."""
    x, y = read_points(batch, geometry)
    codes = locate_xy(index, x, y)
    if category is None:
        return count_by_region(codes, num_regions)
    cats = list(categories or [])
    values = batch.column(category).to_pandas()
    cat_codes = np.asarray(values.map({c: i for i, c in enumerate(cats)}).fillna(-1), dtype=np.int64)
    return count_by_region(codes, num_regions, cat_codes, len(cats))


def point_columns(geometry: str | Sequence[str], category: str | None = None) -> list[str]:
    """Columns to read for a point layer: the WKB column or the ``(x, y)`` pair, plus ``category``."""
    cols = [geometry] if isinstance(geometry, str) else list(geometry)
    return cols + ([category] if category else [])


def _locate_group(geometry: str | Sequence[str], index: RegionIndex, batch: Any, i: int) -> tuple[int, np.ndarray]:
    return i, locate_xy(index, *read_points(batch, geometry))


def _count_group(num_regions: int, geometry: str | Sequence[str], category: str | None,
                 categories: list[Any] | None, index: RegionIndex, batch: Any, i: int) -> np.ndarray:
    return count_batch(index, batch, num_regions, geometry, category, categories)
