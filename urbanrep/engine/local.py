"""The in-process engine (the default): the plain :class:`~urbanrep.graphs._spatial.RegionIndex`."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.parquet as pq

from urbanrep.bundle.partitioned import read_row_group
from urbanrep.engine.base import Engine

if TYPE_CHECKING:
    from urbanrep.graphs._spatial import RegionIndex


class LocalEngine(Engine):
    """Runs every step in this process; Parquet layers are streamed one row group at a time."""

    name = "local"

    def locate(self, index: RegionIndex, points: Any) -> np.ndarray:
        return index.locate_local(points)

    def map_parquet(self, index: RegionIndex, path: str | Path, columns: Sequence[str],
                    fn: Callable[[RegionIndex, Any, int], Any]) -> Iterator[Any]:
        for i in range(pq.ParquetFile(path).num_row_groups):
            yield fn(index, read_row_group(path, i, columns), i)
