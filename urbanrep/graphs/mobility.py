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

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from urbanrep.bundle import Aggregate
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
