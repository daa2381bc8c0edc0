"""Validation and normalisation of a city bundle.

:func:`validate_bundle` is called by the bundle writer and reader. It raises
:class:`~urbanrep.errors.BundleError` for input that cannot be used (naming the layer, the
records and the fix) and repairs what can be repaired, counting every change in a
:class:`ValidationReport`: layers in another CRS are reprojected to the regions' CRS, invalid
geometries are repaired with ``make_valid``, points outside every region are counted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyproj
import shapely

from urbanrep.bundle.core import CityBundle
from urbanrep.bundle.partitioned import ParquetLayer, batch_points, crs_steps
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
    #: Per partitioned layer: file, rows, row groups, and (after a scan) bad records per kind.
    partitioned: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "partitioned": self.partitioned,
            "reprojected": self.reprojected,
            "repaired_geometries": self.repaired_geometries,
            "empty_geometries_skipped": self.empty_geometries_skipped,
            "outside_regions": self.outside_regions,
            "warnings": self.warnings,
        }

    def lines(self) -> list[str]:
        """Human-readable notes, one per change."""
        out = [f"reprojected {lay} to the regions' CRS" for lay in self.reprojected]
        out += [f"repaired {n} invalid geometries in {lay} (make_valid)" for lay, n in self.repaired_geometries.items()]
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
    dup = ids[ids.duplicated(keep=False)].unique()
    if len(dup):
        raise BundleError(f"regions layer: duplicate region_id values {_listed(dup)}; region ids must be unique")


def _check_known_ids(values: pd.Series, known: pd.Index, where: str) -> None:
    unknown = pd.Index(values.unique()).difference(known)
    if len(unknown):
        raise BundleError(
            f"{where} refers to region ids not in the regions layer: {_listed(unknown)}; "
            "remove those rows or add the regions"
        )


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
        repaired = shapely.make_valid(gdf.geometry.values[invalid])
        if layer in ("regions", "landuse"):
            # make_valid can return GeometryCollections; keep their polygonal part.
            repaired = np.array([_polygonal(g) for g in repaired], dtype=object)
        gdf.loc[invalid, gdf.geometry.name] = repaired
        report.repaired_geometries[layer] = int(invalid.sum())
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


def _polygonal(geom: Any) -> Any:
    if geom.geom_type in ("Polygon", "MultiPolygon"):
        return geom
    parts = [g for g in getattr(geom, "geoms", [geom]) if g.geom_type in ("Polygon", "MultiPolygon")]
    return shapely.union_all(parts) if parts else geom


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


def _validate_parquet_layer(layer: ParquetLayer, regions: gpd.GeoDataFrame, report: ValidationReport,
                            scan: bool) -> None:
    """Schema (checked when the layer was opened), footer counts and, with ``scan``, bad records."""
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


def validate_bundle(bundle: CityBundle, scan: bool = False) -> tuple[CityBundle, ValidationReport]:
    """Validate ``bundle`` and return a normalised copy plus a report of every change.

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
    _check_category_lists(bundle.categories)
    _check_region_ids(bundle.regions)
    regions = _normalise_geo(bundle.regions, "regions", None, report)
    crs = regions.crs
    if regions.geometry.name != "geometry":
        regions = regions.rename_geometry("geometry")
    regions = regions.reset_index(drop=True)
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
            gdf = _normalise_geo(gdf, layer, crs, report)
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
        else:
            need = {"origin_region", "dest_region", "value"}
            if not need <= set(t.columns):
                raise BundleError(f"{where}: matrix aggregates need columns {sorted(need)} (has {list(t.columns)})")
            _check_known_ids(t["origin_region"], known, where)
            _check_known_ids(t["dest_region"], known, where)
            check_finite(t, where, ["value"])

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
    return replace(bundle, **changes), report


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
        trips = _normalise_geo(trips, "trips", crs, report)
        n_out = _count_outside(trips["origin"], regions) + _count_outside(trips["destination"], regions)
        if n_out:
            report.outside_regions["trips (trip ends)"] = n_out
    if has_ids:
        both = pd.concat([trips["origin_region"], trips["dest_region"]]).dropna()
        unknown = pd.Index(both.unique()).difference(known)
        if len(unknown) and not has_points:
            report.warnings.append(
                f"trips: {len(unknown)} zone ids are not regions ({_listed(unknown)}); those trips are ignored"
            )
    if "count" in trips.columns:
        check_finite(trips, "layer 'trips'", ["count"])
    return trips
