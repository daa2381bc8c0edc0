"""The Dask engine: the point join and the reducers mapped over partitions on a Dask cluster.

Points are shipped as coordinate arrays (two float64 per point, not Python geometries), split
into ``partitions`` contiguous blocks; the region index is scattered once per worker (polygons
travel as WKB and the STRtree is rebuilt there). Worker threads share one index (all threads of
a worker process; with ``processes=False`` every worker of the cluster shares the client's own
index object, since in-process transfers are not pickled), so the index is
warmed (:meth:`~urbanrep.graphs._spatial.RegionIndex.warm`) before it is shared: GEOS builds
a prepared polygon's point locator lazily on first use, which is not thread-safe. Each block is
located with exactly the code the local engine runs, so both engines return identical arrays.
Parquet layers are read by the workers themselves, one task per row group (the file must be
reachable from every worker), and reduced where they are read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.parquet as pq
import shapely

from urbanrep.bundle.partitioned import read_row_group
from urbanrep.engine.base import Engine, locate_xy, point_coords

if TYPE_CHECKING:
    from urbanrep.graphs._spatial import RegionIndex

INSTALL_HINT = "the Dask engine needs Dask: pip install 'urbanrep[distributed]'"


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(INSTALL_HINT) from exc
    return distributed


class ShippedIndex:
    """A :class:`RegionIndex` that pickles as WKB polygons + ranks (rebuilt on the worker).

    :attr:`index` is warmed (:meth:`RegionIndex.warm`, serialised) on first access, so the
    threads of a worker never race on GEOS' lazily built point locators.
    """

    def __init__(self, index: RegionIndex) -> None:
        self._index = index

    @property
    def index(self) -> RegionIndex:
        """The region index, warmed: safe to use from several threads at once."""
        return self._index if self._index.warmed else self._index.warm()

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        idx = self._index
        return (_rebuild_index, (shapely.to_wkb(idx.polygons), idx.rank, idx.chunk))


def _rebuild_index(wkb: np.ndarray, rank: np.ndarray, chunk: int) -> ShippedIndex:
    from urbanrep.graphs._spatial import RegionIndex

    return ShippedIndex(RegionIndex(shapely.from_wkb(wkb), rank, chunk))


def _locate_block(shipped: ShippedIndex, xy: np.ndarray) -> np.ndarray:
    return locate_xy(shipped.index, xy[0], xy[1])


def _map_row_group(shipped: ShippedIndex, path: str, i: int, columns: list[str],
                   fn: Callable[[RegionIndex, Any, int], Any]) -> Any:
    return fn(shipped.index, read_row_group(path, i, columns), i)


class DaskEngine(Engine):
    """Runs the heavy steps on a Dask cluster.

    Args:
        scheduler: Address of a running scheduler; ``None`` starts a ``LocalCluster`` lazily.
        partitions: Blocks a point array is split into.
        n_workers / threads_per_worker / processes: ``LocalCluster`` settings (ignored with
            ``scheduler``). ``processes=False`` runs the workers as threads of this process.
        memory_limit: ``LocalCluster`` memory limit per worker. ``None`` (default): Dask's
            ``"auto"`` for worker processes, and no limit (``0``) for in-process workers, whose
            memory monitor measures the whole process (the client's regions and reduced results
            included) against a per-worker share of RAM and would pause the workers for memory
            they do not hold.
        min_points: Arrays with fewer points are located in-process (shipping costs more than
            it saves); 0 sends everything to the cluster.
    """

    name = "dask"

    def __init__(self, scheduler: str | None = None, partitions: int = 8, n_workers: int | None = None,
                 threads_per_worker: int = 1, processes: bool = True, min_points: int = 50_000,
                 memory_limit: str | float | None = None) -> None:
        _import_distributed()
        self.scheduler = scheduler
        self.partitions = max(1, int(partitions))
        self.n_workers = n_workers
        self.threads_per_worker = int(threads_per_worker)
        self.processes = bool(processes)
        self.min_points = int(min_points)
        self.memory_limit: str | float = (memory_limit if memory_limit is not None
                                          else ("auto" if self.processes else 0))
        self._client: Any = None
        self._cluster: Any = None
        self._shipped: dict[int, Any] = {}

    @property
    def client(self) -> Any:
        """The ``distributed.Client`` (the cluster is started on first use)."""
        if self._client is None:
            distributed = _import_distributed()
            if self.scheduler is not None:
                self._client = distributed.Client(self.scheduler)
            else:
                self._cluster = distributed.LocalCluster(
                    n_workers=self.n_workers, threads_per_worker=self.threads_per_worker,
                    processes=self.processes, memory_limit=self.memory_limit, dashboard_address=None)
                self._client = distributed.Client(self._cluster)
        return self._client

    @property
    def in_process(self) -> bool:
        """Whether the workers are threads of this process (they then share the client's index)."""
        if self.scheduler is None:
            return not self.processes
        return str(self.scheduler).startswith("inproc://")

    def _index_future(self, index: RegionIndex) -> Any:
        key = id(index)
        if key not in self._shipped:
            if self.in_process:
                # In-process workers get this very object (inproc transfers are not pickled) and
                # use it from their threads while this thread may still locate small arrays with
                # it: build GEOS' lazy structures now, before any sharing.
                index.warm()
            self._shipped = {key: self.client.scatter(ShippedIndex(index), broadcast=True)}
        return self._shipped[key]

    def locate(self, index: RegionIndex, points: Any) -> np.ndarray:
        if len(points) < max(self.min_points, 1):
            return index.locate_local(points)
        bounds = np.linspace(0, len(points), min(self.partitions, len(points)) + 1).astype(np.int64)
        spans = list(zip(bounds[:-1], bounds[1:], strict=True))
        shipped = self._index_future(index)
        # Coordinates travel (two float64 per point), never Python geometries: Dask pickles
        # object arrays even for thread workers, which costs ~10x the join itself.
        x, y = point_coords(points)
        blocks = [np.stack([x[a:b], y[a:b]]) for a, b in spans]
        futures = self.client.map(_locate_block, [shipped] * len(blocks), self.client.scatter(blocks), pure=False)
        return np.concatenate(self.client.gather(futures))

    def map_parquet(self, index: RegionIndex, path: str | Path, columns: Sequence[str],
                    fn: Callable[[RegionIndex, Any, int], Any]) -> Iterator[Any]:
        distributed = _import_distributed()
        shipped = self._index_future(index)
        n = pq.ParquetFile(path).num_row_groups
        futures = [self.client.submit(_map_row_group, shipped, str(path), i, list(columns), fn, pure=False)
                   for i in range(n)]
        for fut in distributed.as_completed(futures):  # reduce as results arrive: one partial held at a time
            result = fut.result()
            fut.release()
            yield result

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        if self._cluster is not None:
            self._cluster.close()
        self._client = self._cluster = None
        self._shipped = {}
