"""Where the heavy ETL steps run: in-process (``local``, the default) or on Dask (``dask``).

Both engines expose the same operations and return identical arrays for identical inputs:

* :meth:`Engine.locate` — region position of every point (the point-in-polygon join that every
  point-based builder uses: POIs, trip origins / destinations, street-view images, road nodes);
* :meth:`Engine.locate_parquet` — the same for a (Geo)Parquet point layer read in row-group
  partitions, so a layer larger than memory never has to be loaded whole;
* :meth:`Engine.count_parquet` — a partitioned reducer: per-region (and per-category) counts of
  a (Geo)Parquet point layer, each partition reduced where it is read and the partial counts
  summed (memory ``O(regions x categories)`` whatever the layer size).

:func:`get_engine` picks one from a :class:`~urbanrep.graphs.GraphConfig`-like set of options
(``engine``, ``dask_scheduler``, ``dask_partitions``). Dask is imported only when the Dask
engine is asked for (``pip install urbanrep[distributed]``).
"""

from __future__ import annotations

import atexit
import functools
from typing import Any

from urbanrep.engine.base import Engine, count_by_region, od_counts
from urbanrep.engine.local import LocalEngine
from urbanrep.errors import ConfigError

ENGINES = ("local", "dask")

__all__ = ["ENGINES", "Engine", "LocalEngine", "count_by_region", "engine_for", "get_engine", "od_counts"]


def get_engine(name: str = "local", scheduler: str | None = None, partitions: int = 8,
               **options: Any) -> Engine:
    """The engine called ``name``.

    Args:
        name: ``"local"`` (in-process) or ``"dask"``.
        scheduler: Dask only: address of a running scheduler (``"tcp://host:8786"``); ``None``
            starts a :class:`dask.distributed.LocalCluster` on first use (closed by
            :meth:`Engine.close`).
        partitions: Dask only: partitions a point layer is split into (at least one per
            worker thread keeps every core busy).
        **options: Passed to the Dask engine (``n_workers``, ``threads_per_worker``,
            ``processes``, ``min_points``, ``memory_limit``).

    Raises:
        ConfigError: an unknown engine name.
        ImportError: ``"dask"`` without Dask installed (names the extra to install).
    """
    if name == "local":
        return LocalEngine()
    if name == "dask":
        from urbanrep.engine.dask import DaskEngine

        return DaskEngine(scheduler=scheduler, partitions=partitions, **options)
    raise ConfigError(f"unknown engine {name!r}; use one of {', '.join(ENGINES)}")


@functools.cache
def _shared_engine(name: str, scheduler: str | None, partitions: int) -> Engine:
    engine = get_engine(name, scheduler, partitions)
    atexit.register(engine.close)
    return engine


def engine_for(config: Any) -> Engine | None:
    """The engine a :class:`~urbanrep.graphs.GraphConfig` asks for (``None``: in-process).

    Dask engines are shared per ``(engine, dask_scheduler, dask_partitions)`` within a process,
    so a local cluster is started once, not once per graph, and closed at exit.
    """
    name = getattr(config, "engine", "local")
    if name == "local":
        return None
    return _shared_engine(name, getattr(config, "dask_scheduler", None), int(getattr(config, "dask_partitions", 8)))
