"""Validation and normalisation of a city bundle.

:func:`validate_bundle` is called by the bundle writer and reader. It raises
:class:`~urbanrep.errors.BundleError` for input that cannot be used (naming the layer, the
records and the fix) and repairs what can be repaired, counting every change in a
:class:`ValidationReport`: layers in another CRS are reprojected to the regions' CRS, invalid
geometries are repaired with ``make_valid``, points outside every region are counted.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field, replace
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyproj
import shapely

from urbanrep.bundle.core import CityBundle
from urbanrep.bundle.partitioned import ParquetLayer, batch_points, crs_steps
from urbanrep.bundle.plausibility import check_crs_plausible, check_overlaps, check_point_order, polygonal
from urbanrep.bundle.spec import CATEGORY_COLUMNS, GEOMETRY_TYPES, RAW_LAYERS, REQUIRED_COLUMNS
from urbanrep.errors import BundleError

log = logging.getLogger(__name__)

_MAX_LISTED = 10


@dataclass
class ValidationReport:
    """What validation changed or noticed. Nothing is dropped without being counted here."""

    reprojected: list[str] = field(default_factory=list)
    repaired_geometries: dict[str, int] = field(default_factory=dict)
    empty_geometries_skipped: dict[str, int] = field(default_factory=dict)
    outside_regions: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    #: Per layer: area of the repaired geometries before and after ``make_valid`` (layer units²).
    repaired_area: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Region overlaps below the tolerance, cut from the later region of each pair.
    overlaps: dict[str, Any] = field(default_factory=dict)
    #: Per matrix aggregate: duplicate (origin, dest[, slice]) rows summed into one.
    summed_duplicates: dict[str, int] = field(default_factory=dict)
    #: Per layer: records without a category / class (the graph build drops them).
    no_category: dict[str, int] = field(default_factory=dict)
    #: Trips whose time cannot be parsed (in totals, not in time slices).
    unparseable_times: int = 0
    #: Per partitioned layer: file, rows, row groups, and (after a scan) bad records per kind.
    partitioned: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ValidationReport:
        """The report back from :meth:`as_dict` (e.g. a manifest's ``validation``); unknown keys are ignored."""
        import dataclasses

        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in names})

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "partitioned": self.partitioned,
            "reprojected": self.reprojected,
            "repaired_geometries": self.repaired_geometries,
            "empty_geometries_skipped": self.empty_geometries_skipped,
            "outside_regions": self.outside_regions,
            "repaired_area": self.repaired_area,
            "overlaps": self.overlaps,
            "summed_duplicates": self.summed_duplicates,
            "no_category": self.no_category,
            "unparseable_times": self.unparseable_times,
            "warnings": self.warnings,
        }

    def lines(self) -> list[str]:
        """Human-readable notes, one per change."""
        out = [f"reprojected {lay} to the regions' CRS" for lay in self.reprojected]
        for lay, n in self.repaired_geometries.items():
            area = self.repaired_area.get(lay, {})
            change = (f": their area changed from {area['before']:.6g} to {area['after']:.6g} ({area['change_pct']:+.1f} %)"
                      + (f", most for {area['largest']}" if area.get("largest") else "")) if area else ""
            out.append(f"repaired {n} invalid geometries in {lay} (make_valid){change}")
        if self.overlaps:
            out.append(self.overlaps["line"])
        out += [f"aggregate {name!r}: {n} duplicate (origin_region, dest_region[, slice]) rows were summed into one row "
                "per pair" for name, n in self.summed_duplicates.items()]
        out += [f"{n} records of {lay} have no {'category' if lay == 'pois' else 'class'} (the graph build drops them)"
                for lay, n in self.no_category.items()]
        if self.unparseable_times:
            out.append(f"{self.unparseable_times} trips have a time that cannot be parsed (counted in the totals, not "
                       "in any time slice)")
        out += [f"skipped {n} empty/missing geometries in {lay}" for lay, n in self.empty_geometries_skipped.items()]
        out += [f"{n} records of {lay} lie outside every region (kept, ignored by region aggregation)"
                for lay, n in self.outside_regions.items()]
        for lay, info in self.partitioned.items():
            counts = ", ".join(f"{k}={v}" for k, v in info.get("bad_records", {}).items())
            out.append(f"{lay}: kept on disk ({info['rows']} records in {info['row_groups']} row groups of "
                       f"{info['file']})" + (f"; scanned: {counts}" if "bad_records" in info else "; not scanned"))
        return out + self.warnings


def _listed(values: Any) -> str:
    vals = list(values)
    head = ", ".join(map(str, vals[:_MAX_LISTED]))
    return head + (f" … ({len(vals)} in all)" if len(vals) > _MAX_LISTED else "")


def check_finite(df: pd.DataFrame, where: str, columns: list[str] | None = None) -> None:
    """Raise if a numeric column holds NaN or ±inf, naming the column and the rows."""
    cols = columns if columns is not None else [
        c for c in df.columns if pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])
    ]
    for c in cols:
        vals = pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(vals)
        if bad.any():
            rows = df.index[bad]
            raise BundleError(
                f"{where}: column {c!r} has {int(bad.sum())} NaN/inf values at rows {_listed(rows)}; "
                "fill or remove those records (missing target values are expressed by leaving the row out)"
            )


def _check_region_ids(regions: gpd.GeoDataFrame) -> None:
    if len(regions) == 0:
        raise BundleError("regions layer is empty: a bundle needs at least one region polygon")
    if "region_id" not in regions.columns:
        raise BundleError(
            f"regions layer has no 'region_id' column (columns: {', '.join(map(str, regions.columns))}); "
            "add one with a unique id per region"
        )
    ids = regions["region_id"]
    missing = regions.index[ids.isna().to_numpy()]
    if len(missing):
        raise BundleError(f"regions layer: missing region_id at rows {_listed(missing)}; give every region an id")
    check_id_types(ids, "regions layer", "region_id")
    dup = ids[ids.duplicated(keep=False)].unique()
    if len(dup):
        raise BundleError(f"regions layer: duplicate region_id values {_listed(dup)}; region ids must be unique")


def _kind_of(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "bool"
    if isinstance(value, (int, np.integer)):
        return "int"
    if isinstance(value, (float, np.floating)):
        return "float"
    if isinstance(value, str):
        return "str"
    return type(value).__name__


def check_id_types(ids: pd.Series, where: str, column: str) -> None:
    """Raise when an id column mixes types (e.g. integers and strings), which no join can match."""
    if ids.dtype != object:
        return
    kinds = pd.Series([_kind_of(v) for v in ids.dropna().to_numpy()], dtype=object)
    if kinds.nunique() > 1:
        examples = ", ".join(f"{k} (e.g. {ids.dropna().iloc[int(np.flatnonzero(kinds.to_numpy() == k)[0])]!r})"
                             for k in kinds.unique())
        raise BundleError(f"{where}: column {column!r} mixes value types: {examples}; use one type, e.g. "
                          f"df[{column!r}] = df[{column!r}].astype(str)")


def _check_known_ids(values: pd.Series, known: pd.Index, where: str, column: str = "region_id") -> None:
    check_id_types(values, where, column)
    unknown = pd.Index(values.dropna().unique()).difference(known)
    if len(unknown):
        mismatch = id_type_mismatch(unknown, known, where, column)
        if mismatch:
            raise BundleError(mismatch)
        raise BundleError(
            f"{where} refers to region ids not in the regions layer: {_listed(unknown)}; "
            "remove those rows or add the regions"
        )


def id_type_mismatch(unknown: pd.Index, known: pd.Index, where: str, column: str) -> str | None:
    """The message for ids that match the regions' ids only as text (``"7"`` vs ``7``), else None."""
    as_text = set(map(str, known))
    if not len(unknown) or not all(str(v) in as_text for v in unknown[:1000]):
        return None
    theirs = _kind_of(unknown[0])
    ours = _kind_of(known[0]) if len(known) else "?"
    if theirs == ours:
        return None
    fix = (f"df[{column!r}] = df[{column!r}].astype(int)" if ours == "int" else
           f"df[{column!r}] = df[{column!r}].astype({ours})")
    def shown(values: Any) -> str:
        return ", ".join(repr(v.item() if isinstance(v, np.generic) else v) for v in list(values)[:3])

    return (f"{where}: {column} values are {theirs} ({shown(unknown)}) but the regions layer's region_id values "
            f"are {ours} ({shown(known)}); they match only as text: convert them, {fix}")


def _normalise_geo(
    gdf: gpd.GeoDataFrame, layer: str, crs: Any, report: ValidationReport
) -> gpd.GeoDataFrame:
    """Check CRS and geometry types, reproject, repair, and skip (counted) empty geometries."""
    if not isinstance(gdf, gpd.GeoDataFrame):
        raise BundleError(f"layer {layer!r} must be a GeoDataFrame, got {type(gdf).__name__}")
    if gdf.crs is None:
        raise BundleError(
            f"layer {layer!r} has no CRS; set it before building the bundle, e.g. "
            "gdf = gdf.set_crs('EPSG:4326') for longitude/latitude, or the EPSG code of its projection"
        )
    geom_cols = [c for c in gdf.columns if isinstance(gdf[c].dtype, gpd.array.GeometryDtype)]
    for c in geom_cols:  # before any reprojection: do the coordinates fit the CRS they are labelled with?
        col = gdf[c]
        col = col[~(col.isna() | col.is_empty).to_numpy()]
        if isinstance(col, gpd.GeoSeries) and col.crs is None:
            col = col.set_crs(gdf.crs)
        check_crs_plausible(col, layer if len(geom_cols) == 1 else f"{layer}.{c}")
    if crs is not None and not gdf.crs.equals(crs):
        log.info("reprojecting layer %s from %s to the regions' CRS %s", layer, gdf.crs.to_string(), crs.to_string())
        gdf = gdf.copy()
        for c in geom_cols:
            gdf[c] = gdf[c].to_crs(crs)
        gdf = gdf.set_crs(crs, allow_override=True)
        report.reprojected.append(layer)
    empty = np.zeros(len(gdf), dtype=bool)
    for c in geom_cols:
        empty |= (gdf[c].isna() | gdf[c].is_empty).to_numpy()
    if empty.any():
        if layer == "regions":
            raise BundleError(f"regions layer: empty or missing geometry at rows {_listed(gdf.index[empty])}")
        report.empty_geometries_skipped[layer] = int(empty.sum())
        log.warning("layer %s: skipping %d records with empty/missing geometry", layer, int(empty.sum()))
        gdf = gdf.loc[~empty]
    invalid = ~gdf.geometry.is_valid.to_numpy()
    if invalid.any():
        gdf = gdf.copy()
        original = np.asarray(gdf.geometry.values[invalid], dtype=object)
        repaired = shapely.make_valid(original)
        if layer in ("regions", "landuse"):
            # make_valid can return GeometryCollections; keep their polygonal part.
            repaired = np.array([polygonal(g) for g in repaired], dtype=object)
        gdf.loc[invalid, gdf.geometry.name] = repaired
        report.repaired_geometries[layer] = int(invalid.sum())
        before, after = shapely.area(original), shapely.area(repaired)
        if before.sum() > 0 or after.sum() > 0:
            k = int(np.argmax(np.abs(after - before)))
            name = gdf["region_id"].to_numpy()[invalid][k] if "region_id" in gdf.columns else gdf.index[invalid][k]
            name = name.item() if isinstance(name, np.generic) else name
            report.repaired_area[layer] = {
                "before": float(before.sum()), "after": float(after.sum()),
                "change_pct": float(100 * (after.sum() - before.sum()) / before.sum()) if before.sum() > 0 else 100.0,
                "largest": f"{'region' if layer == 'regions' else 'record'} {name!r} ({before[k]:.6g} -> {after[k]:.6g})",
                "units": "square units of the layer's CRS"}
        log.warning("layer %s: repaired %d invalid geometries with make_valid", layer, int(invalid.sum()))
    allowed = GEOMETRY_TYPES.get(layer)
    if allowed is not None:
        types = gdf.geometry.geom_type
        wrong = ~types.isin(allowed).to_numpy()
        if wrong.any():
            raise BundleError(
                f"layer {layer!r}: geometry types {_listed(sorted(set(types[wrong])))} at rows "
                f"{_listed(gdf.index[wrong])}; this layer takes {', '.join(allowed)}"
            )
    return gdf


def _count_outside(points: gpd.GeoSeries, regions: gpd.GeoDataFrame) -> int:
    hit = regions.sindex.query(points.values, predicate="intersects")[0]
    return int(len(points) - len(np.unique(hit)))


def _null_counts(layer: ParquetLayer, columns: list[str]) -> dict[str, int]:
    """Nulls per column from the Parquet footer statistics (no data read; -1 where unknown)."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(layer.path).metadata
    pos = {meta.schema.column(i).path: i for i in range(meta.num_columns)}
    out: dict[str, int] = {}
    for c in columns:
        total = 0
        for g in range(meta.num_row_groups):
            stats = meta.row_group(g).column(pos[c]).statistics if c in pos else None
            if stats is None or not stats.has_null_count:
                total = -1
                break
            total += int(stats.null_count)
        out[c] = total
    return out


def _scan_parquet_layer(layer: ParquetLayer, regions: gpd.GeoDataFrame) -> dict[str, int]:
    """Bad records of a partitioned layer, counted one row group at a time (never loaded whole)."""
    steps = crs_steps(layer.crs, regions.crs, regions.crs) if layer.crs is not None else ()
    tree = regions.sindex
    bad = {"missing_coordinates": 0, "non_point_geometries": 0, "outside_regions": 0}
    if layer.layer == "pois":
        bad["no_category"] = 0
    extra = [c for c in ("category", "count") if layer.has(c)]
    for i, table in layer.iter_row_groups([*layer.point_columns(), *extra]):
        for _, spec in layer.geometry:
            x, y, non_point = batch_points(table, spec, steps)
            missing = np.isnan(x)
            bad["missing_coordinates"] += int((missing & ~non_point).sum())
            bad["non_point_geometries"] += int(non_point.sum())
            pts = shapely.points(x[~missing], y[~missing])
            hit = tree.query(pts, predicate="intersects")[0]
            bad["outside_regions"] += int(len(pts) - len(np.unique(hit)))
        if "category" in extra:
            bad["no_category"] += int(table.column("category").null_count)
        if "count" in extra:
            cnt = np.asarray(table.column("count").to_numpy(zero_copy_only=False), dtype=np.float64)
            wrong = np.flatnonzero(~np.isfinite(cnt) | (cnt < 0))
            if len(wrong):
                raise BundleError(f"layer 'trips' ({layer.path}): row group {i}: 'count' is NaN, inf or negative "
                                  f"at rows {_listed(wrong)} (within the row group); fix or remove those trips")
    return bad


def _footer_bounds(layer: ParquetLayer) -> dict[str, np.ndarray]:
    """Per point role, ``[xmin, ymin, xmax, ymax]`` of a partitioned layer from its footer (no data read).

    Coordinate columns give their min/max statistics; WKB columns the ``bbox`` of the GeoParquet
    metadata when the writer recorded one. Roles without such information are left out.
    """
    import json

    import pyarrow.parquet as pq

    meta = pq.ParquetFile(layer.path).metadata
    pos = {meta.schema.column(i).path: i for i in range(meta.num_columns)}
    geo = json.loads((meta.metadata or {}).get(b"geo", b"{}") or b"{}")
    out: dict[str, np.ndarray] = {}
    for role, spec in layer.geometry:
        if isinstance(spec, str):
            bbox = geo.get("columns", {}).get(spec, {}).get("bbox")
            if bbox and len(bbox) == 4:
                out[role] = np.asarray(bbox, dtype=np.float64)
            continue
        lo, hi = [], []
        for col in spec:
            stats = [meta.row_group(g).column(pos[col]).statistics for g in range(meta.num_row_groups)] \
                if col in pos else []
            stats = [st for st in stats if st is not None and st.has_min_max]
            if not stats:
                break
            lo.append(min(float(st.min) for st in stats))
            hi.append(max(float(st.max) for st in stats))
        if len(lo) == 2:
            out[role] = np.array([lo[0], lo[1], hi[0], hi[1]])
    return out


def _validate_parquet_layer(layer: ParquetLayer, regions: gpd.GeoDataFrame, report: ValidationReport,
                            scan: bool) -> None:
    """Schema (checked when the layer was opened), footer counts and, with ``scan``, bad records.

    The coordinates' range (from the footer) must fit the layer's CRS, as for layers in memory.
    """
    if layer.crs is not None:
        for role, b in _footer_bounds(layer).items():
            if np.isfinite(b).all():
                corners = gpd.GeoSeries(shapely.points([b[0], b[2]], [b[1], b[3]]), crs=layer.crs)
                check_crs_plausible(corners, layer.layer if role == "geometry" else f"{layer.layer}.{role}")
    info: dict[str, Any] = {"file": str(layer.path), "rows": layer.rows, "row_groups": layer.row_groups,
                            "crs": layer.crs}
    info["null_values"] = _null_counts(layer, [c for c in ("category", "count", "time") if layer.has(c)]
                                       + layer.point_columns())
    if layer.crs is not None and not pyproj_equal(layer.crs, regions.crs):
        info["transformed_per_batch"] = f"{layer.crs} -> regions' CRS"
    if scan:
        info["bad_records"] = _scan_parquet_layer(layer, regions)
        if info["bad_records"]["outside_regions"]:
            report.outside_regions[layer.layer] = info["bad_records"]["outside_regions"]
    report.partitioned[layer.layer] = info


def pyproj_equal(a: Any, b: Any) -> bool:
    """True when two CRS inputs are the same CRS."""
    return bool(pyproj.CRS.from_user_input(a).equals(pyproj.CRS.from_user_input(b)))


def validate_bundle(bundle: CityBundle, scan: bool = False,
                    regions_checked: bool = False) -> tuple[CityBundle, ValidationReport]:
    """Validate ``bundle`` and return a normalised copy plus a report of every change.

    ``regions_checked=True`` skips the pairwise region-overlap test (the one check whose cost
    grows with the regions' vertex count): :func:`~urbanrep.bundle.io.read_bundle` passes it when
    ``regions.parquet`` is byte for byte the file :func:`~urbanrep.bundle.io.write_bundle` wrote
    after validating it (SHA-256 in the manifest).

    Layers kept on disk (:class:`~urbanrep.bundle.partitioned.ParquetLayer`) are never loaded:
    their schema is checked when they are opened, their row and null counts come from the
    Parquet footer, and with ``scan=True`` they are read one row group at a time to count
    missing coordinates, non-point geometries, points outside every region and POIs without a
    category (``urbanrep validate`` scans).

    Raises:
        BundleError: on a missing CRS, an empty regions layer, duplicate or missing region
            ids, NaN/inf in numeric columns, ids in targets/labels/aggregates that are not
            regions, a raw layer missing required columns, or wrong geometry types.
    """
    report = ValidationReport()
    if not isinstance(bundle.regions, gpd.GeoDataFrame):
        raise BundleError(f"the regions layer must be a GeoDataFrame, got {type(bundle.regions).__name__}")
    _check_category_lists(bundle.categories)
    _check_region_ids(bundle.regions)
    regions = _normalise_geo(bundle.regions, "regions", None, report)
    crs = regions.crs
    if regions.geometry.name != "geometry":
        regions = regions.rename_geometry("geometry")
    regions = regions.reset_index(drop=True)
    regions, overlap = (regions, None) if regions_checked else check_overlaps(regions)
    if overlap is not None:
        report.overlaps = {"pairs": overlap.pairs, "area_m2": overlap.area_m2, "largest": overlap.largest,
                           "line": overlap.line()}
    known = pd.Index(regions["region_id"])
    changes: dict[str, Any] = {"regions": regions}

    for layer in RAW_LAYERS:
        gdf = getattr(bundle, layer)
        if gdf is None:
            continue
        if isinstance(gdf, ParquetLayer):
            _validate_parquet_layer(gdf, regions, report, scan)
            continue
        if len(gdf) == 0:
            report.warnings.append(f"layer {layer} is empty and was dropped from the bundle")
            changes[layer] = None
            continue
        missing_cols = [c for c in REQUIRED_COLUMNS.get(layer, ()) if c not in gdf.columns]
        if missing_cols:
            raise BundleError(
                f"layer {layer!r} lacks required columns {missing_cols} (has: {', '.join(map(str, gdf.columns))})"
            )
        if layer == "trips":
            gdf = _validate_trips(gdf, regions, known, report)
        else:
            original_crs = gdf.crs if isinstance(gdf, gpd.GeoDataFrame) else None
            gdf = _normalise_geo(gdf, layer, crs, report)
            if layer in ("pois", "street_view"):
                check_point_order(gdf.geometry, original_crs, regions, layer)
            if layer in ("pois", "landuse", "roads"):
                _check_missing_categories(gdf, layer, report)
            if layer in ("remote_sensing", "street_view") and not ({"image_path", "feature"} & set(gdf.columns)):
                raise BundleError(f"layer {layer!r} needs an 'image_path' or a 'feature' column")
            if layer in ("pois", "street_view"):
                n_out = _count_outside(gdf.geometry, regions)
                if n_out:
                    report.outside_regions[layer] = n_out
        if layer in bundle.categories:
            check_categories(gdf, layer, bundle.categories[layer])
        num_cols = [c for c in gdf.columns if c not in ("feature",) and pd.api.types.is_numeric_dtype(gdf[c])
                    and not pd.api.types.is_bool_dtype(gdf[c])]
        check_finite(gdf, f"layer {layer!r}", num_cols)
        changes[layer] = gdf

    aggregates = dict(bundle.aggregates)
    for agg in bundle.aggregates.values():
        where = f"aggregate {agg.name!r}"
        t = agg.table
        if agg.kind == "vector":
            if "region_id" not in t.columns:
                raise BundleError(f"{where}: vector aggregates need a 'region_id' column")
            _check_known_ids(t["region_id"], known, where)
            dup = t["region_id"][t["region_id"].duplicated()].unique()
            if len(dup):
                raise BundleError(f"{where}: duplicate region_id values {_listed(dup)}")
            check_finite(t, where, agg.value_columns())
            if agg.modality in ("poi", "landuse"):
                _check_not_negative(t, agg)
        else:
            need = {"origin_region", "dest_region", "value"}
            if not need <= set(t.columns):
                raise BundleError(f"{where}: matrix aggregates need columns {sorted(need)} (has {list(t.columns)})")
            _check_known_ids(t["origin_region"], known, where, "origin_region")
            _check_known_ids(t["dest_region"], known, where, "dest_region")
            check_finite(t, where, ["value"])
            new_agg = _check_matrix(agg, report)
            if new_agg is not agg:
                aggregates[agg.name] = new_agg

    for name, cols in (("targets", ("region_id", "target", "value")), ("labels", ("region_id", "label", "value"))):
        t = getattr(bundle, name)
        if t is None:
            continue
        missing_cols = [c for c in cols if c not in t.columns]
        if missing_cols:
            raise BundleError(f"{name} table lacks columns {missing_cols}; expected long form {list(cols)}")
        _check_known_ids(t["region_id"], known, name)
        if name == "targets":
            check_finite(t, "targets", ["value"])
        key = cols[1]
        dup = t[t.duplicated(["region_id", key], keep=False)]
        if len(dup):
            raise BundleError(f"{name}: several values for the same region and {key}: "
                              f"{_listed(dup[['region_id', key]].drop_duplicates().itertuples(index=False))}")
    for group, members in bundle.target_groups.items():
        have = set(bundle.targets["target"]) if bundle.targets is not None else set()
        absent = [m for m in members if m not in have]
        if absent:
            raise BundleError(f"target group {group!r} names targets that are absent: {_listed(absent)}")
    if any(aggregates[k] is not bundle.aggregates[k] for k in aggregates):
        changes["aggregates"] = aggregates
    out = replace(bundle, **changes)
    out.mark_validated()
    return out, report


def ensure_validated(bundle: CityBundle) -> CityBundle:
    """``bundle`` when :func:`validate_bundle` returned it unchanged since, else its validated copy.

    The graph build and :class:`~urbanrep.model.UrbanRep` call this, so a bundle built in memory
    gets the same checks (and the same messages) as ``urbanrep validate`` and ``write_bundle``.
    """
    if bundle.is_validated():
        return bundle
    validated, report = validate_bundle(bundle)
    for line in report.lines():
        log.info("%s: %s", bundle.name, line)
    return validated


def _check_missing_categories(gdf: pd.DataFrame, layer: str, report: ValidationReport) -> None:
    """The graph build's rule: every category missing is an error; some missing are counted (dropped)."""
    col = "category" if layer == "pois" else "class"
    missing = int(gdf[col].isna().sum())
    if missing == len(gdf):
        raise BundleError(f"layer {layer!r} column {col!r}: every value is missing; the layer needs category values")
    if missing:
        report.no_category[layer] = missing


def _check_not_negative(t: pd.DataFrame, agg: Any) -> None:
    values = t[agg.value_columns()].to_numpy(dtype=np.float64)
    if values.size and values.min() < 0:
        rows = np.flatnonzero((values < 0).any(axis=1))
        label = "POI" if agg.modality == "poi" else "land-use"
        raise BundleError(f"{label} aggregate(s) [{agg.name!r}] has negative values in rows {rows[:10].tolist()}: it "
                          "must hold counts, areas or shares (>= 0); fix the aggregate or drop it from the bundle")


def _check_matrix(agg: Any, report: ValidationReport) -> Any:
    """Negative flows and slices are errors (as in the graph build); duplicate pairs are summed and counted."""
    t = agg.table
    if agg.modality == "mobility" and len(t) and t["value"].min() < 0:
        rows = np.flatnonzero(t["value"].to_numpy() < 0)
        raise BundleError(f"aggregate {agg.name!r}: mobility flows have negative counts at rows {_listed(rows)}; "
                          "trip 'count' and OD 'value' must be >= 0")
    keys = ["origin_region", "dest_region"] + (["slice"] if "slice" in t.columns else [])
    if "slice" in t.columns and len(t) and t["slice"].min() < 0:
        raise BundleError(f"aggregate {agg.name!r}: negative 'slice' values; slices are 0-based integers")
    dup = t.duplicated(keys, keep=False)
    if not dup.any():
        return agg
    n_rows = int(dup.sum())
    summed = t.groupby(keys, sort=False, as_index=False, dropna=False)["value"].sum()
    report.summed_duplicates[agg.name] = n_rows - int(t[dup].drop_duplicates(keys).shape[0])
    log.warning("aggregate %s: %d duplicate OD rows summed", agg.name, report.summed_duplicates[agg.name])
    return replace(agg, table=summed[[*keys, "value"]])


def _check_category_lists(categories: dict[str, Any]) -> None:
    for layer, names in categories.items():
        if layer not in CATEGORY_COLUMNS:
            raise BundleError(f"categories: layer {layer!r} has no category column; fixed category lists are for "
                              f"{', '.join(CATEGORY_COLUMNS)}")
        if not isinstance(names, list | tuple) or not names or not all(isinstance(n, str) for n in names):
            raise BundleError(f"categories[{layer!r}] must be a non-empty list of class names (strings)")
        if len(set(names)) != len(names):
            raise BundleError(f"categories[{layer!r}] lists a class twice")


def check_categories(layer_df: pd.DataFrame, layer: str, names: list[str]) -> None:
    """Raise when a layer holds classes outside its fixed category list (missing values are allowed).

    Args:
        layer_df: The layer (a table with its category column).
        layer: ``"pois"``, ``"landuse"`` or ``"roads"``.
        names: The fixed class list (``CityBundle.categories[layer]``).
    """
    column = CATEGORY_COLUMNS[layer]
    values = layer_df[column].dropna().astype(str)
    outside = values[~values.isin(names)]
    if len(outside):
        counts = outside.value_counts()
        raise BundleError(f"layer {layer!r} column {column!r}: {len(outside)} records have classes outside the "
                          f"bundle's fixed category list ({_listed(counts.index)}); map them to listed classes "
                          "(urbanrep.vocabulary) or leave 'categories' out of the bundle")


def _validate_trips(
    trips: pd.DataFrame, regions: gpd.GeoDataFrame, known: pd.Index, report: ValidationReport
) -> pd.DataFrame:
    crs = regions.crs
    has_points = {"origin", "destination"} <= set(trips.columns)
    has_ids = {"origin_region", "dest_region"} <= set(trips.columns)
    if not (has_points or has_ids):
        raise BundleError(
            "layer 'trips' needs point columns 'origin' and 'destination' or region-id columns "
            f"'origin_region' and 'dest_region' (has: {', '.join(map(str, trips.columns))})"
        )
    if has_points:
        original_crs = trips.crs if isinstance(trips, gpd.GeoDataFrame) else None
        trips = _normalise_geo(trips, "trips", crs, report)
        for end in ("origin", "destination"):
            check_point_order(gpd.GeoSeries(trips[end], crs=crs), original_crs, regions, f"trips.{end}")
        n_out = _count_outside(trips["origin"], regions) + _count_outside(trips["destination"], regions)
        if n_out:
            report.outside_regions["trips (trip ends)"] = n_out
    if has_ids:
        both = pd.concat([trips["origin_region"], trips["dest_region"]]).dropna()
        unknown = pd.Index(both.unique()).difference(known)
        for col in ("origin_region", "dest_region"):
            check_id_types(trips[col], "layer 'trips'", col)
        mismatch = id_type_mismatch(unknown, known, "layer 'trips'", "origin_region/dest_region")
        if mismatch:
            raise BundleError(mismatch)
        if len(unknown) and not has_points:
            report.warnings.append(
                f"trips: {len(unknown)} zone ids are not regions ({_listed(unknown)}); those trips are ignored"
            )
    if "count" in trips.columns:
        check_finite(trips, "layer 'trips'", ["count"])
        count = pd.to_numeric(trips["count"], errors="coerce").to_numpy(dtype=np.float64)
        if len(count) and count.min() < 0:
            raise BundleError(f"layer 'trips': mobility flows have negative counts at rows "
                              f"{_listed(trips.index[count < 0])}; trip 'count' and OD 'value' must be >= 0")
    if "time" in trips.columns:
        given = trips["time"].notna().to_numpy()
        with warnings.catch_warnings():  # element-wise parsing of mixed formats, as in the graph build
            warnings.simplefilter("ignore", UserWarning)
            parsed = pd.to_datetime(trips["time"], errors="coerce") if given.any() else trips["time"]
        bad = given & pd.isna(parsed).to_numpy()
        if bad.any() and bad.sum() == given.sum():
            raise BundleError(f"layer 'trips' column 'time': no value can be read as a time (e.g. "
                              f"{trips['time'][bad].iloc[0]!r} at row {trips.index[bad][0]}); give ISO 8601 times such "
                              "as '2016-05-01 08:30:00' or datetime values")
        report.unparseable_times = int(bad.sum())
    return trips
