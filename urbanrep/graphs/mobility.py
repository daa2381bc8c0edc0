"""Mobility modality: OD flows → directed weighted edges, in/out-flow features ``x_mobility``.

Input, either
* raw trips: origin/destination points located in regions by a point-in-polygon join, or
  zone-id columns ``origin_region`` / ``dest_region`` (ids that are not regions fall back to
  the points when the row has them, else the trip is dropped and counted); optional ``count``
  (default 1) and ``time`` (split into ``time_slices`` equal time-of-day bins); or
* OD matrix aggregates (long form ``origin_region, dest_region, value[, slice]``), plus any
  mobility vector aggregates (e.g. hourly in/out flows) appended to the features.

Everything is sparse (``np.unique`` / ``np.bincount`` on pair keys); no ``N x N`` array is built.

Output: edges ``(region, mobility, region)`` for every OD pair with a non-zero flow between two
different regions, ``edge_weight`` = trip count, ``edge_attr`` ``[E, S]`` per-slice counts
when slices are known. Features (``log1p`` throughout): out-flow, in-flow and intra-region
trips; out- and in-flow per slice; the mobility vector aggregates (``log1p`` when they are
non-negative, as given otherwise). A region without any trip (and no aggregate row) is masked.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from urbanrep.bundle import Aggregate
from urbanrep.bundle.partitioned import ParquetLayer, batch_points
from urbanrep.engine import Engine, LocalEngine
from urbanrep.engine.base import locate_xy
from urbanrep.errors import GraphError
from urbanrep.graphs._features import masked_report, vector_aggregates
from urbanrep.graphs._spatial import Edges, ModalityResult, RegionIndex


@dataclass
class FlowTable:
    """Trips or OD entries in long form: region positions, optional slice, weight.

    Attributes:
        origin: int64 ``[T]`` region positions (all >= 0).
        dest: int64 ``[T]``.
        weight: float64 ``[T]`` counts.
        slice: int64 ``[T]`` slice index (-1 = unknown) or ``None`` when no slices exist.
        num_slices: ``S`` (0 without slices).
    """

    origin: np.ndarray
    dest: np.ndarray
    weight: np.ndarray
    slice: np.ndarray | None
    num_slices: int


def time_slice(times: pd.Series, num_slices: int) -> np.ndarray:
    """Equal time-of-day bins: slice ``floor(hour_of_day / 24 * S)``; -1 where the time is missing.

    The hour of day is the local wall-clock time (time zones are dropped, not converted), in
    seconds precision.

    Returns:
        int64 ``[T]`` slice per trip.
    """
    t = pd.to_datetime(times, errors="coerce")
    if getattr(t.dt, "tz", None) is not None:
        t = t.dt.tz_localize(None)
    missing = t.isna().to_numpy()
    ns = t.to_numpy(dtype="datetime64[ns]").astype(np.int64)
    seconds = (ns // 1_000_000_000) % 86_400  # floor division: also right before 1970
    s = (seconds * num_slices) // 86_400
    return np.where(missing, -1, np.clip(s, 0, num_slices - 1)).astype(np.int64)


def flows_from_trips(trips: pd.DataFrame, index: RegionIndex | None, region_ids: pd.Index,
                     num_slices: int) -> tuple[FlowTable, dict[str, Any]]:
    """Locate raw trips in regions.

    Args:
        trips: Trips table (geometry columns already in the metric CRS).
        index: Region index (needed when trips carry ``origin``/``destination`` points).
        region_ids: Region ids in bundle order.
        num_slices: Time-of-day bins for the ``time`` column.

    Returns:
        The located trips and a report of what was dropped.
    """
    n_trips = len(trips)
    ends = {}
    outside = {}
    for end, id_col, geo_col in (("origin", "origin_region", "origin"), ("dest", "dest_region", "destination")):
        pos = np.full(n_trips, -1, dtype=np.int64)
        if id_col in trips.columns:
            pos = np.asarray(region_ids.get_indexer(pd.Index(trips[id_col])), dtype=np.int64)
        if geo_col in trips.columns:
            todo = np.flatnonzero(pos < 0)
            if len(todo):
                if index is None:
                    raise ValueError("flows_from_trips needs the region index for point trips")
                geoms = np.asarray(trips[geo_col].values, dtype=object)
                if len(todo) == n_trips:
                    pos = index.locate(geoms)
                else:
                    pos[todo] = index.locate(geoms[todo])
        ends[end] = pos
        outside[end] = int((pos < 0).sum())
    weight = (trips["count"].to_numpy(dtype=np.float64) if "count" in trips.columns
              else np.ones(n_trips, dtype=np.float64))
    ok = (ends["origin"] >= 0) & (ends["dest"] >= 0)
    sl = None
    no_time = 0
    if "time" in trips.columns:
        sl = time_slice(trips["time"], num_slices)[ok]
        no_time = int((sl < 0).sum())
    table = FlowTable(ends["origin"][ok], ends["dest"][ok], weight[ok], sl, num_slices if sl is not None else 0)
    report = {
        "source": "raw",
        "trips": int(n_trips),
        "origin_unlocated": outside["origin"],
        "dest_unlocated": outside["dest"],
        "dropped_trips": int((~ok).sum()),
        "dropped_reason": "origin or destination outside every region / not a region id",
        "trips_without_time": no_time,
        "time_slices": table.num_slices,
    }
    return table, report


#: Partial OD sums are merged once this many entries are pending (bounds memory between merges).
_MERGE_ENTRIES = 8_000_000


@dataclass(frozen=True)
class _TripPlan:
    """What one row group of a partitioned trips layer needs (picklable, shipped to workers)."""

    path: str
    origin: Any
    destination: Any
    steps: tuple[tuple[str, str], ...]
    region_ids: pd.Index | None
    num_regions: int
    num_slices: int  # 0: no time column
    has_count: bool


def _sum_keys(keys: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct ``keys`` (sorted) and the summed ``weights`` of each."""
    uniq, inv = np.unique(keys, return_inverse=True)
    return uniq, np.bincount(inv.reshape(-1), weights=weights, minlength=len(uniq))


def _batch_trips(index: RegionIndex, table: Any, i: int, *, plan: _TripPlan
                 ) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """One row group of trips reduced to distinct ``(origin, dest, slice)`` keys and summed counts."""
    t = table.num_rows
    ends: dict[str, np.ndarray] = {}
    missing: dict[str, np.ndarray] = {}
    for end, id_col, spec in (("origin", "origin_region", plan.origin), ("dest", "dest_region", plan.destination)):
        pos = np.full(t, -1, dtype=np.int64)
        if plan.region_ids is not None and id_col in table.column_names:
            pos = np.asarray(plan.region_ids.get_indexer(pd.Index(table.column(id_col).to_pandas())), dtype=np.int64)
        miss = np.zeros(t, dtype=bool)
        if spec is not None:
            todo = np.flatnonzero(pos < 0)
            if len(todo):
                x, y, _ = batch_points(table.take(todo) if len(todo) < t else table, spec, plan.steps)
                pos[todo] = locate_xy(index, x, y)
                miss[todo] = np.isnan(x)
        elif plan.region_ids is None:
            miss[:] = True
        ends[end], missing[end] = pos, miss
    if plan.has_count:
        weight = np.asarray(table.column("count").to_numpy(zero_copy_only=False), dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(weight))
        if len(bad):
            raise GraphError(f"{plan.path}: row group {i}: trip 'count' is NaN/inf at rows {bad[:10].tolist()} "
                             "(row numbers within the row group); fill or remove those trips")
        if len(weight) and weight.min() < 0:
            raise GraphError("mobility flows have negative counts; trip 'count' and OD 'value' must be >= 0 "
                             f"({plan.path}, row group {i})")
    else:
        weight = np.ones(t, dtype=np.float64)
    ok = (ends["origin"] >= 0) & (ends["dest"] >= 0)
    n = plan.num_regions
    key = ends["origin"][ok] * n + ends["dest"][ok]
    no_time = 0
    if plan.num_slices:
        sl = time_slice(table.column("time").to_pandas(), plan.num_slices)[ok]
        no_time = int((sl < 0).sum())
        key = key * (plan.num_slices + 1) + (sl + 1)
    keys, sums = _sum_keys(key, weight[ok])
    either_missing = missing["origin"] | missing["dest"]
    return keys, sums, {
        "trips": t,
        "origin_unlocated": int((ends["origin"] < 0).sum()),
        "dest_unlocated": int((ends["dest"] < 0).sum()),
        "missing_coordinates": int((either_missing & ~ok).sum()),
        "dropped_trips": int((~ok).sum()),
        "trips_without_time": no_time,
    }


def flows_from_parquet(layer: ParquetLayer, index: RegionIndex | None, region_ids: pd.Index, num_slices: int,
                       steps: Sequence[tuple[str, str]] = (), engine: Engine | None = None
                       ) -> tuple[FlowTable, dict[str, Any]]:
    """:func:`flows_from_trips` for a trips layer kept on disk, reduced row group by row group.

    Each row group's trips are located (zone ids first, points where the id is not a region,
    as in memory) and reduced to distinct ``(origin, dest, slice)`` triples with summed counts;
    the partial sums are merged as they arrive. Memory: one row group plus the distinct
    triples (at most the number of OD pairs x slices, the size of the graph's edge list), never
    one entry per trip. The returned table holds one entry per triple; :func:`build_mobility`
    gives the same graph from it as from the trips themselves (sums of integer counts are exact).

    Args:
        layer: The trips layer.
        index: Region index (metric CRS; needed when the layer has points).
        region_ids: Region ids in bundle order.
        num_slices: Time-of-day bins for the ``time`` column.
        steps: CRS transforms of the points (:func:`urbanrep.bundle.partitioned.crs_steps`).
        engine: Where the row groups are read and reduced.

    Returns:
        The flows and a report of what was dropped (as :func:`flows_from_trips`, plus
        ``missing_coordinates``).
    """
    n = len(region_ids)
    slices = num_slices if layer.has("time") else 0
    if n * n * (slices + 1) >= 2**62:
        raise GraphError(f"{n} regions x {slices} time slices overflow the int64 OD keys; use fewer slices")
    origin, dest = layer.point_spec("origin"), layer.point_spec("destination")
    if (origin is not None) and index is None:
        raise ValueError("flows_from_parquet needs the region index for point trips")
    ids = {"origin_region", "dest_region"} & set(layer.columns)
    plan = _TripPlan(path=str(layer.path), origin=origin, destination=dest, steps=tuple(steps),
                     region_ids=region_ids if ids else None, num_regions=n, num_slices=slices,
                     has_count=layer.has("count"))
    columns = [*layer.point_columns(), *sorted(ids), *(["time"] if slices else []),
               *(["count"] if plan.has_count else [])]
    engine = engine or LocalEngine()
    report: dict[str, Any] = {}
    merged_k, merged_w = np.zeros(0, np.int64), np.zeros(0)
    pending_k: list[np.ndarray] = []
    pending_w: list[np.ndarray] = []
    pending = 0
    for keys, sums, rep in engine.map_parquet(index, layer.path, columns,  # type: ignore[arg-type]
                                              functools.partial(_batch_trips, plan=plan)):
        pending_k.append(keys)
        pending_w.append(sums)
        pending += len(keys)
        for k, v in rep.items():
            report[k] = report.get(k, 0) + v
        if pending > max(_MERGE_ENTRIES, len(merged_k)):
            merged_k, merged_w = _sum_keys(np.concatenate([merged_k, *pending_k]), np.concatenate([merged_w, *pending_w]))
            pending_k, pending_w, pending = [], [], 0
    if pending_k:
        merged_k, merged_w = _sum_keys(np.concatenate([merged_k, *pending_k]), np.concatenate([merged_w, *pending_w]))
    del pending_k, pending_w
    sl = None
    if slices:
        sl = merged_k % (slices + 1) - 1
        merged_k = merged_k // (slices + 1)
    table = FlowTable(merged_k // n, merged_k % n, merged_w, sl, slices)
    out = {"source": "raw", "trips": report.get("trips", 0),
           "origin_unlocated": report.get("origin_unlocated", 0), "dest_unlocated": report.get("dest_unlocated", 0),
           "missing_coordinates": report.get("missing_coordinates", 0),
           "dropped_trips": report.get("dropped_trips", 0),
           "dropped_reason": "origin or destination outside every region / not a region id / no coordinates",
           "trips_without_time": report.get("trips_without_time", 0), "time_slices": slices,
           "partitioned": {"file": str(layer.path), "row_groups": layer.row_groups, "od_entries": int(len(merged_w))}}
    return table, out


def _matrix_flows(agg: Aggregate, region_ids: pd.Index) -> FlowTable:
    t = agg.table
    o = np.asarray(region_ids.get_indexer(pd.Index(t["origin_region"])), dtype=np.int64)
    d = np.asarray(region_ids.get_indexer(pd.Index(t["dest_region"])), dtype=np.int64)
    ok = (o >= 0) & (d >= 0)
    w = t["value"].to_numpy(dtype=np.float64)
    if "slice" in t.columns:
        s = t["slice"].to_numpy(dtype=np.int64)
        if len(s) and s.min() < 0:
            raise GraphError(f"aggregate {agg.name!r}: negative 'slice' values; slices are 0-based integers")
        return FlowTable(o[ok], d[ok], w[ok], s[ok], int(s.max()) + 1 if len(s) else 1)
    return FlowTable(o[ok], d[ok], w[ok], None, 0)


def pick_matrices(matrices: list[Aggregate], main: str | None, sliced: str | None
                  ) -> tuple[Aggregate | None, Aggregate | None]:
    """The OD matrix and the sliced matrix to use (see ``GraphConfig.mobility_matrix``)."""
    by_name = {a.name: a for a in matrices}
    for name in (main, sliced):
        if name and name not in by_name:
            raise GraphError(f"mobility matrix aggregate {name!r} is not in the bundle; "
                             f"mobility matrices present: {', '.join(by_name) or 'none'}")
    unsliced = [a for a in matrices if "slice" not in a.table.columns]
    with_slices = [a for a in matrices if "slice" in a.table.columns]
    chosen = by_name[main] if main else (unsliced[0] if unsliced else (with_slices[0] if with_slices else None))
    if sliced == "":
        return chosen, None
    if sliced:
        return chosen, by_name[sliced]
    if chosen is not None and "slice" in chosen.table.columns:
        return chosen, chosen
    return chosen, (with_slices[0] if with_slices else None)


def _per_slice(flows: FlowTable, sl: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    s = flows.num_slices
    ok = sl >= 0
    out = np.bincount(flows.origin[ok] * s + sl[ok], weights=flows.weight[ok], minlength=n * s)
    inn = np.bincount(flows.dest[ok] * s + sl[ok], weights=flows.weight[ok], minlength=n * s)
    return out.reshape(n, s), inn.reshape(n, s)


def build_mobility(
    region_ids: pd.Index,
    *,
    flows: FlowTable,
    slice_flows: FlowTable | None = None,
    vectors: list[Aggregate] | None = None,
    report: dict[str, Any] | None = None,
) -> ModalityResult:
    """Mobility features, mask and directed OD edges.

    Args:
        region_ids: ``N`` ids in bundle order.
        flows: OD entries (trips or matrix cells); repeated pairs are summed.
        slice_flows: Entries with slices for ``edge_attr`` and per-slice features (default:
            ``flows`` when it has slices).
        vectors: Mobility vector aggregates appended to the features.
        report: Report of the flow extraction, extended and returned.

    Returns:
        :class:`ModalityResult`; ``edges.attr`` is float32 ``[E, S]`` when slices are known.
    """
    n = len(region_ids)
    report = dict(report or {})
    for f in (flows, slice_flows):
        if f is not None and len(f.weight) and f.weight.min() < 0:
            raise GraphError("mobility flows have negative counts; trip 'count' and OD 'value' must be >= 0")
    if slice_flows is None and flows.slice is not None:
        slice_flows = flows
    out_flow = np.bincount(flows.origin, weights=flows.weight, minlength=n)
    in_flow = np.bincount(flows.dest, weights=flows.weight, minlength=n)
    self_trip = flows.origin == flows.dest
    intra = np.bincount(flows.origin[self_trip], weights=flows.weight[self_trip], minlength=n)
    blocks = [np.log1p(np.stack([out_flow - intra, in_flow - intra, intra], axis=1))]
    names = ["log1p:out_flow", "log1p:in_flow", "log1p:intra_flow"]

    cross = ~self_trip
    key, inv = np.unique(flows.origin[cross] * n + flows.dest[cross], return_inverse=True)
    inv = inv.reshape(-1)
    weight = np.bincount(inv, weights=flows.weight[cross], minlength=len(key))
    nz = weight != 0
    key, weight = key[nz], weight[nz]
    attr = None
    if slice_flows is not None and slice_flows.num_slices > 0 and slice_flows.slice is not None:
        s = slice_flows.num_slices
        sl = slice_flows.slice
        out_s, in_s = _per_slice(slice_flows, sl, n)
        blocks += [np.log1p(out_s), np.log1p(in_s)]
        names += [f"log1p:out_flow_s{i}" for i in range(s)] + [f"log1p:in_flow_s{i}" for i in range(s)]
        if slice_flows is flows:  # the edges' own entries: their pair positions are known
            ok = sl[cross] >= 0
            new_pos = np.cumsum(nz) - 1
            pos = new_pos[inv[ok]]
            found = nz[inv[ok]]
            skey = np.zeros(0, dtype=np.int64)
            s_sl, s_w = sl[cross][ok], flows.weight[cross][ok]
        else:
            ok = (sl >= 0) & (slice_flows.origin != slice_flows.dest)
            skey = slice_flows.origin[ok] * n + slice_flows.dest[ok]
            pos = np.searchsorted(key, skey)
            found = (pos < len(key)) & (key[np.minimum(pos, max(len(key) - 1, 0))] == skey) if len(key) \
                else np.zeros(len(skey), dtype=bool)
            s_sl, s_w = sl[ok], slice_flows.weight[ok]
        attr = np.bincount(pos[found] * s + s_sl[found], weights=s_w[found],
                           minlength=len(key) * s).reshape(len(key), s).astype(np.float32)
        report["slice_pairs_not_in_od"] = int(len(np.unique(skey[~found]))) if len(skey) else 0
        report["time_slices"] = s
    values, has_row, vnames = vector_aggregates(vectors or [], region_ids)
    if values.shape[1]:
        nonneg = values.min() >= 0
        blocks.append(np.log1p(values) if nonneg else values)
        names += [f"{'log1p:' if nonneg else ''}{c}" for c in vnames]
        report["vector_aggregates"] = [a.name for a in vectors or []]
    mask = (out_flow + in_flow) > 0
    mask |= has_row
    x = np.hstack(blocks).astype(np.float32)
    x[~mask] = 0
    edges = Edges(np.stack([key // n, key % n]).astype(np.int64), weight.astype(np.float32), attr)
    report.update(
        total_flow=float(flows.weight.sum()),
        intra_region_flow=float(intra.sum()),
        od_pairs=int(len(key)),
        edges=edges.num_edges,
        **masked_report(mask, np.asarray(region_ids)),
    )
    return ModalityResult(x=x, mask=mask, edges=edges, feature_names=names, report=report)


def matrix_flows(matrices: list[Aggregate], region_ids: pd.Index, main: str | None, sliced: str | None
                 ) -> tuple[FlowTable | None, FlowTable | None, dict[str, Any]]:
    """Flows of the chosen OD matrix aggregate (and of the sliced one), with a report."""
    chosen, with_slices = pick_matrices(matrices, main, sliced)
    report: dict[str, Any] = {"source": "aggregate"}
    if chosen is None:
        return None, None, report
    flows = _matrix_flows(chosen, region_ids)
    sflows = None
    if with_slices is not None:
        sflows = flows if with_slices is chosen else _matrix_flows(with_slices, region_ids)
    report.update(matrix=chosen.name, slice_matrix=with_slices.name if with_slices is not None else None,
                  unused_matrices=[a.name for a in matrices if a is not chosen and a is not with_slices])
    return flows, sflows, report
