"""GIS export: join region_id-indexed tables to the region polygons and write GIS files.

The join follows srai's contract: every output table is a left join of a ``region_id``-indexed
table onto the regions GeoDataFrame, so every region appears once, in the regions' row order,
and regions without a row in the table keep NaN values.

Files written by :func:`export_gis` for a table named ``T`` (``tables={"T": df}``):

* ``T.parquet``: GeoParquet, geometry in the regions' CRS (stored as PROJJSON).
* ``<gpkg_name>.gpkg``: one GeoPackage holding **one layer per table** (layer name ``T``),
  geometry in the regions' CRS.
* ``T.geojson``: GeoJSON in WGS84 (EPSG:4326, RFC 7946: lon/lat order, 7 decimals).
* ``T.csv``: ``region_id``, ``centroid_lon``, ``centroid_lat`` (region centroid in EPSG:4326,
  computed in a metric CRS), the value columns, and ``wkt``: the polygon as WKT in the regions'
  CRS (full precision). CSV carries no CRS; the regions' CRS is the one of :func:`export_gis`'s
  input (also written to ``crs.txt`` next to the CSV files).

Every file is written atomically: a failure while writing leaves no partial file behind and an
earlier complete file at the same path untouched.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import geopandas as gpd
import pandas as pd
import shapely

from urbanrep.atomic import atomic_path, write_text_atomic
from urbanrep.errors import ExportError

log = logging.getLogger(__name__)

#: Supported formats and their file extensions.
FORMATS: dict[str, str] = {"parquet": ".parquet", "gpkg": ".gpkg", "geojson": ".geojson", "csv": ".csv"}
DEFAULT_FORMATS: tuple[str, ...] = ("parquet", "gpkg", "geojson", "csv")
#: Columns of a long predictions table (``predictions.parquet`` of a run folder).
PREDICTION_COLUMNS: tuple[str, ...] = ("region_id", "target", "observed", "predicted")
#: Run-folder tables read by :func:`read_run_tables`, by table name.
RUN_TABLES: dict[str, str] = {
    "embeddings": "embeddings.parquet",
    "fusion_weights": "fusion_weights.parquet",
    "predictions": "predictions.parquet",
}
WGS84 = "EPSG:4326"
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_RESERVED = ("region_id", "geometry", "wkt", "centroid_lon", "centroid_lat")


def predictions_wide(predictions: pd.DataFrame) -> pd.DataFrame:
    """Pivot long out-of-fold predictions to one row per region.

    Args:
        predictions: Long table with columns ``region_id, target, observed, predicted`` (extra
            columns such as a repeat/split id are allowed). Several rows for one
            ``(region_id, target)`` (repeated cross-validation) are averaged.

    Returns:
        DataFrame indexed by ``region_id`` with columns ``obs_<target>, pred_<target>`` for each
        target in order of first appearance, shape ``[num_regions_with_predictions, 2 * T]``.
    """
    missing = [c for c in PREDICTION_COLUMNS if c not in predictions.columns]
    if missing:
        raise ExportError(
            f"predictions table lacks column(s) {missing}; expected a long table with columns "
            f"{list(PREDICTION_COLUMNS)} (one row per region and target)"
        )
    targets = list(dict.fromkeys(predictions["target"].astype(str)))
    df = predictions.assign(target=predictions["target"].astype(str))
    counts = df.groupby(["region_id", "target"], sort=False).size()
    if (counts > 1).any():
        log.info("predictions: %d region/target pairs have several rows (repeated CV); using their mean",
                 int((counts > 1).sum()))
    mean = df.groupby(["region_id", "target"], sort=False)[["observed", "predicted"]].mean()
    wide = mean.unstack("target")
    columns: list[tuple[str, str]] = []
    names: list[str] = []
    for t in targets:
        columns += [("observed", t), ("predicted", t)]
        names += [f"obs_{t}", f"pred_{t}"]
    out = wide.reindex(columns=pd.MultiIndex.from_tuples(columns))
    out.columns = names
    out.index.name = "region_id"
    return out


def _is_long_predictions(table: pd.DataFrame) -> bool:
    return {"target", "observed", "predicted"}.issubset(table.columns)


def region_table(table: pd.DataFrame, name: str = "table") -> pd.DataFrame:
    """Normalise a table to be indexed by unique ``region_id`` with string column names.

    Accepts a ``region_id`` column or index; long prediction tables are pivoted with
    :func:`predictions_wide`.

    Raises:
        ExportError: No ``region_id``, duplicated region ids, or a reserved column name.
    """
    if _is_long_predictions(table):
        return predictions_wide(table.reset_index() if "region_id" not in table.columns else table)
    if "region_id" in table.columns:
        out = table.set_index("region_id")
    elif table.index.name == "region_id":
        out = table
    else:
        raise ExportError(
            f"table {name!r} has no 'region_id' column or index (columns: {list(table.columns)[:8]}); "
            "index it by region_id (srai convention) or add a region_id column"
        )
    if out.index.has_duplicates:
        dup = out.index[out.index.duplicated()].unique()[:5].tolist()
        raise ExportError(f"table {name!r} has duplicated region_id values, e.g. {dup}; keep one row per region")
    out = out.copy()
    out.columns = [str(c) for c in out.columns]
    clash = [c for c in out.columns if c in _RESERVED]
    if clash:
        raise ExportError(f"table {name!r} uses reserved column name(s) {clash}; rename them before export")
    return out


def _check_regions(regions: gpd.GeoDataFrame) -> None:
    if not isinstance(regions, gpd.GeoDataFrame):
        raise ExportError(f"regions must be a GeoDataFrame with region_id and geometry, got {type(regions).__name__}")
    if "region_id" not in regions.columns:
        raise ExportError("regions GeoDataFrame has no 'region_id' column; use CityBundle.regions")
    if regions.crs is None:
        raise ExportError("regions GeoDataFrame has no CRS; set it with regions.set_crs(...) before export")
    if regions["region_id"].duplicated().any():
        dup = regions.loc[regions["region_id"].duplicated(), "region_id"].head(5).tolist()
        raise ExportError(f"regions have duplicated region_id values, e.g. {dup}")


def join_regions(regions: gpd.GeoDataFrame, table: pd.DataFrame, name: str = "table") -> gpd.GeoDataFrame:
    """Left-join a region_id-indexed table onto the region polygons.

    Args:
        regions: GeoDataFrame with ``region_id`` and polygon geometry, CRS set.
        table: Table with a ``region_id`` column or index (long predictions are pivoted).
        name: Table name used in messages.

    Returns:
        GeoDataFrame ``[num_regions, 2 + F]``: ``region_id``, the table's ``F`` value columns and
        ``geometry``, in the regions' row order and CRS; NaN where a region has no row.
    """
    _check_regions(regions)
    values = region_table(table, name)
    known = pd.Index(regions["region_id"])
    unknown = ~values.index.isin(known)
    if len(values) and unknown.all():
        raise ExportError(
            f"table {name!r}: none of its region_id values match the regions "
            f"(table e.g. {values.index[:3].tolist()} [{values.index.dtype}], regions e.g. "
            f"{known[:3].tolist()} [{known.dtype}]); export with the bundle the run was trained on"
        )
    if unknown.any():
        log.warning("table %s: %d row(s) with region_id not in the regions are dropped, e.g. %s",
                    name, int(unknown.sum()), values.index[unknown][:5].tolist())
    missing = int((~known.isin(values.index)).sum())
    if missing:
        log.info("table %s: %d of %d regions have no row; their values are NaN", name, missing, len(known))
    joined = values.reindex(known)
    joined.index.name = "region_id"
    out = gpd.GeoDataFrame(
        joined.reset_index(), geometry=regions.geometry.to_numpy(), crs=regions.crs
    )
    return out


def _metric_crs(gdf: gpd.GeoDataFrame) -> Any:
    if gdf.crs.is_projected:
        return gdf.crs
    return gdf.estimate_utm_crs()


def _csv_frame(gdf: gpd.GeoDataFrame) -> pd.DataFrame:
    """``region_id, centroid_lon, centroid_lat, <values>, wkt`` (WKT in the gdf's CRS)."""
    centroids = gdf.geometry.to_crs(_metric_crs(gdf)).centroid.to_crs(WGS84)
    values = pd.DataFrame(gdf.drop(columns="geometry"))
    values.insert(1, "centroid_lon", centroids.x.to_numpy())
    values.insert(2, "centroid_lat", centroids.y.to_numpy())
    values["wkt"] = shapely.to_wkt(gdf.geometry.to_numpy(), rounding_precision=-1)
    return values


def _crs_text(crs: Any) -> str:
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}\n" if epsg is not None else crs.to_wkt(pretty=True) + "\n"


def _validate_formats(formats: Iterable[str]) -> list[str]:
    fmts = list(dict.fromkeys(str(f).lower() for f in formats))
    bad = [f for f in fmts if f not in FORMATS]
    if bad or not fmts:
        raise ExportError(f"unknown export format(s) {bad or '(none)'}; choose from {', '.join(FORMATS)}")
    return fmts


def export_gis(
    regions: gpd.GeoDataFrame,
    tables: Mapping[str, pd.DataFrame],
    out_dir: str | Path,
    formats: Sequence[str] = DEFAULT_FORMATS,
    gpkg_name: str = "regions",
) -> list[Path]:
    """Join each table to the region polygons and write it in the requested GIS formats.

    Args:
        regions: GeoDataFrame with ``region_id`` and polygon geometry; its CRS is kept in
            GeoParquet, GeoPackage and the CSV ``wkt`` column.
        tables: Table name → region_id-indexed table (``region_id`` column or index), e.g.
            ``{"embeddings": emb [N, D], "fusion_weights": w [N, M], "predictions": long}``.
            Long prediction tables (``region_id, target, observed, predicted``) are pivoted
            to ``obs_<target>, pred_<target>``. Names become file stems and GeoPackage layers.
        out_dir: Output folder (created if needed).
        formats: Any of ``"parquet"`` (GeoParquet), ``"gpkg"`` (one file, one layer per
            table), ``"geojson"`` (EPSG:4326) and ``"csv"`` (centroid lon/lat + WKT).
        gpkg_name: Stem of the GeoPackage file.

    Returns:
        The written paths, in writing order.

    Raises:
        ExportError: Bad format or table name, regions without CRS or region_id, tables whose
            region ids do not match the regions.
    """
    fmts = _validate_formats(formats)
    if not tables:
        raise ExportError("nothing to export: pass at least one table, e.g. {'embeddings': df}")
    for name in [*tables, gpkg_name]:
        if not _NAME_RE.match(str(name)):
            raise ExportError(f"table/file name {name!r} is not a safe file name; use letters, digits, '_', '-', '.'")
    _check_regions(regions)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    joined = {name: join_regions(regions, table, name) for name, table in tables.items()}
    written: list[Path] = []
    for fmt in fmts:
        if fmt == "gpkg":
            path = out_dir / f"{gpkg_name}{FORMATS[fmt]}"
            with atomic_path(path) as tmp:
                for name, gdf in joined.items():
                    gdf.to_file(tmp, layer=name, driver="GPKG")
            written.append(path)
            continue
        for name, gdf in joined.items():
            path = out_dir / f"{name}{FORMATS[fmt]}"
            with atomic_path(path) as tmp:
                if fmt == "parquet":
                    gdf.to_parquet(tmp, index=False)
                elif fmt == "geojson":
                    gdf.to_crs(WGS84).to_file(tmp, driver="GeoJSON", layer=name, RFC7946="YES")
                else:  # csv
                    _csv_frame(gdf).to_csv(tmp, index=False)
            written.append(path)
        if fmt == "csv":
            crs_path = out_dir / "crs.txt"
            write_text_atomic(crs_path, _crs_text(regions.crs))
            written.append(crs_path)
    log.info("exported %d table(s) to %s as %s", len(joined), out_dir, ", ".join(fmts))
    return written


def read_run_tables(run_dir: str | Path) -> dict[str, pd.DataFrame]:
    """Read the region_id-indexed tables of a run folder that exist.

    Returns:
        ``{"embeddings": ..., "fusion_weights": ..., "predictions": ...}`` for the files of
        :data:`RUN_TABLES` present in ``run_dir`` (predictions stay long).

    Raises:
        ExportError: ``run_dir`` is missing, holds none of the tables, or a file is unreadable.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ExportError(f"run folder {run_dir} does not exist; pass the folder written by 'urbanrep run'")
    tables: dict[str, pd.DataFrame] = {}
    for name, fname in RUN_TABLES.items():
        path = run_dir / fname
        if not path.exists():
            log.info("run folder %s has no %s; skipping it", run_dir, fname)
            continue
        try:
            tables[name] = pd.read_parquet(path)
        except Exception as exc:
            raise ExportError(f"cannot read {path}: {exc}; re-run the pipeline to rewrite it") from exc
    if not tables:
        raise ExportError(
            f"run folder {run_dir} holds none of {', '.join(RUN_TABLES.values())}; "
            "pass the folder written by 'urbanrep run'"
        )
    return tables


def export_run(
    run_dir: str | Path,
    regions: gpd.GeoDataFrame,
    out_dir: str | Path | None = None,
    formats: Sequence[str] = DEFAULT_FORMATS,
) -> list[Path]:
    """Export a run folder's embeddings, fusion weights and predictions as GIS files.

    Args:
        run_dir: Run folder with ``embeddings.parquet`` and optionally ``fusion_weights.parquet``
            and ``predictions.parquet``.
        regions: The bundle's regions (``CityBundle.regions``).
        out_dir: Output folder; default ``run_dir / "gis"``.
        formats: See :func:`export_gis`.

    Returns:
        The written paths.
    """
    tables = read_run_tables(run_dir)
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "gis"
    return export_gis(regions, tables, out, formats=formats)

