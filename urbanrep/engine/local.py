"""The in-process engine (the default): the plain :class:`~urbanrep.graphs._spatial.RegionIndex`."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.parquet as pq

from urbanrep.bundle.partitioned import read_row_group
from urbanrep.engine.base import Engine, count_batch, locate_xy, read_points

if TYPE_CHECKING:
    from urbanrep.graphs._spatial import RegionIndex


def _columns(geometry: str | Sequence[str], category: str | None = None) -> list[str]:
    cols = [geometry] if isinstance(geometry, str) else list(geometry)
    return cols + ([category] if category else [])


class LocalEngine(Engine):
    """Runs every step in this process; Parquet layers are streamed one row group at a time."""

    name = "local"

    def locate(self, index: RegionIndex, points: Any) -> np.ndarray:
        return index.locate_local(points)

    def locate_parquet(self, index: RegionIndex, path: str | Path,
                       geometry: str | Sequence[str] = "geometry") -> np.ndarray:
        pf = pq.ParquetFile(path)
        parts = [locate_xy(index, *read_points(pf.read_row_group(i, columns=_columns(geometry)), geometry))
                 for i in range(pf.num_row_groups)]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def count_parquet(self, index: RegionIndex, path: str | Path, num_regions: int,
                      geometry: str | Sequence[str] = "geometry", category: str | None = None,
                      categories: Sequence[Any] | None = None) -> np.ndarray:
        pf = pq.ParquetFile(path)
        total = np.zeros((num_regions, len(categories or []) if category else 1))
        for i in range(pf.num_row_groups):
            batch = pf.read_row_group(i, columns=_columns(geometry, category))
            total += count_batch(index, batch, num_regions, geometry, category, categories)
        return total

    def map_parquet(self, index: RegionIndex, path: str | Path, columns: Sequence[str],
                    fn: Callable[[RegionIndex, Any, int], Any]) -> Iterator[Any]:
        for i in range(pq.ParquetFile(path).num_row_groups):
            yield fn(index, read_row_group(path, i, columns), i)
