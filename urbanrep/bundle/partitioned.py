"""Point layers kept on disk: a lazy, row-group-partitioned view of a (Geo)Parquet file.

A city's ``pois`` and ``trips`` can hold tens of millions of points, more than fit in memory as
Python geometries. Such a layer is held in a :class:`~urbanrep.bundle.CityBundle` as a
:class:`ParquetLayer` (path, point columns, CRS, row and row-group counts) instead of a
GeoDataFrame; the graph builders then read it one row group at a time and reduce each group
where it is read (per-region category counts for POIs, OD pair sums for trips), so memory is
``O(regions x categories)`` plus one row group, never ``O(points)``.

Point columns, per *role* (``geometry`` for POIs; ``origin`` and ``destination`` for trips):

* a GeoParquet WKB point column named after the role (its CRS from the file's ``geo``
  metadata; a column without ``crs`` there is ``OGC:CRS84``, as the GeoParquet spec says), or
* a pair of float coordinate columns: ``x`` / ``y`` for POIs, ``origin_x`` / ``origin_y`` and
  ``destination_x`` / ``destination_y`` for trips (or any pair named in the manifest's layer
  entry, ``"geometry": {"origin": ["ox", "oy"], ...}``), in the CRS the layer entry names
  (``"crs"``), else in the bundle's CRS.

Other columns follow :mod:`urbanrep.bundle.spec` (``category`` for POIs; ``origin_region`` /
``dest_region``, ``time``, ``count`` for trips). A layer in another CRS than the regions is
transformed batch by batch (``pyproj`` on coordinate arrays), through exactly the CRS steps the
in-memory path takes, so both paths give identical coordinates.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pyproj
import shapely

from urbanrep.errors import BundleError

log = logging.getLogger(__name__)

#: Raw layers that may be held partitioned, and their point roles.
POINT_ROLES: dict[str, tuple[str, ...]] = {"pois": ("geometry",), "trips": ("origin", "destination")}
#: Default coordinate column pairs per role.
XY_COLUMNS: dict[str, tuple[str, str]] = {
    "geometry": ("x", "y"),
    "origin": ("origin_x", "origin_y"),
    "destination": ("destination_x", "destination_y"),
}
#: ``read_bundle(partitioned="auto")`` keeps a point layer on disk above this file size (bytes):
#: 256 MiB of compressed Parquet is about 10M points, 2-3 GB as in-memory geometries.
PARTITION_BYTES = 256 * 2**20

PointSpec = str | tuple[str, str]


def crs_string(crs: Any) -> str:
    """A compact, lossless string for a CRS (``EPSG:n`` when it has a code, else PROJJSON)."""
    crs = pyproj.CRS.from_user_input(crs)
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg is not None else crs.to_json()


@dataclass(frozen=True)
class ParquetLayer:
    """A raw point layer read lazily from a Parquet file, one row group at a time.

    Attributes:
        path: The Parquet file.
        layer: ``"pois"`` or ``"trips"``.
        geometry: ``(role, column)`` pairs: ``column`` is a WKB column name or an ``(x, y)``
            pair of float columns (``roles``: ``geometry``; or ``origin`` and ``destination``).
        crs: CRS of the point columns (:func:`pyproj.CRS.from_user_input` input), ``None``
            only for trips given by zone ids alone.
        columns: Every column of the file.
        rows: Records ``P`` (``len(layer)``).
        row_groups: Row groups (the unit the layer is read and reduced in).
    """

    path: Path
    layer: str
    geometry: tuple[tuple[str, PointSpec], ...]
    crs: str | None
    columns: tuple[str, ...]
    rows: int
    row_groups: int

    def __len__(self) -> int:
        return self.rows

    def point_spec(self, role: str) -> PointSpec | None:
        """The WKB column or ``(x, y)`` pair of ``role`` (``None`` when absent)."""
        return dict(self.geometry).get(role)

    def has(self, column: str) -> bool:
        """True when the file has ``column``."""
        return column in self.columns

    def read_row_group(self, i: int, columns: Sequence[str] | None = None) -> pa.Table:
        """Row group ``i`` (only ``columns`` when given)."""
        return read_row_group(self.path, i, columns)

    def iter_row_groups(self, columns: Sequence[str] | None = None) -> Iterator[tuple[int, pa.Table]]:
        """``(i, table)`` for every row group, in file order."""
        for i in range(self.row_groups):
            yield i, self.read_row_group(i, columns)

    def point_columns(self) -> list[str]:
        """Columns holding point coordinates (WKB or x/y)."""
        out: list[str] = []
        for _, spec in self.geometry:
            out += [spec] if isinstance(spec, str) else list(spec)
        return out

    def manifest_entry(self) -> dict[str, Any]:
        """What the bundle manifest records about the layer (besides the file name)."""
        return {"records": self.rows, "row_groups": self.row_groups, "partitioned": True,
                "geometry": {role: spec if isinstance(spec, str) else list(spec) for role, spec in self.geometry},
                "crs": self.crs}


def read_row_group(path: str | Path, i: int, columns: Sequence[str] | None = None) -> pa.Table:
    """Row group ``i`` of a Parquet file, with a :class:`BundleError` naming the file when unreadable."""
    try:
        return pq.ParquetFile(path).read_row_group(i, columns=list(columns) if columns is not None else None)
    except (OSError, pa.ArrowException) as exc:
        raise BundleError(f"cannot read row group {i} of {path} ({type(exc).__name__}: {exc}); "
                          "the file is truncated or corrupt: re-create it") from exc


def _geo_metadata(schema: pa.Schema) -> dict[str, Any]:
    raw = (schema.metadata or {}).get(b"geo")
    if not raw:
        return {}
    try:
        return dict(json.loads(raw))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}


def _column_crs(path: Path, geo: dict[str, Any], column: str) -> str:
    meta = geo.get("columns", {}).get(column, {})
    if "crs" not in meta:
        return "OGC:CRS84"  # the GeoParquet default
    if meta["crs"] is None:
        raise BundleError(f"{path}: GeoParquet column {column!r} declares an unknown CRS (crs: null); "
                          "rewrite the file with its CRS set (gdf.set_crs(...).to_parquet(...))")
    return crs_string(pyproj.CRS.from_json_dict(meta["crs"]) if isinstance(meta["crs"], dict)
                      else pyproj.CRS.from_user_input(meta["crs"]))


def has_xy_points(path: str | Path, layer: str) -> bool:
    """True when a Parquet file holds a layer's points as plain coordinate columns (no WKB)."""
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException):
        return False
    names = set(schema.names)
    roles = POINT_ROLES.get(layer, ())
    return bool(roles) and all(r not in names and set(XY_COLUMNS[r]) <= names for r in roles)


def open_parquet_layer(path: str | Path, layer: str, *, crs: Any = None,
                       geometry: dict[str, Any] | None = None) -> ParquetLayer:
    """Open a Parquet point layer lazily (reads the schema and footer only).

    Args:
        path: The file.
        layer: ``"pois"`` or ``"trips"``.
        crs: CRS of ``x``/``y`` coordinate columns (WKB columns take theirs from the GeoParquet
            metadata). Required when the layer has coordinate columns.
        geometry: ``{role: column or [x, y]}`` overriding the default column names.

    Raises:
        BundleError: an unreadable file, a layer that cannot be partitioned, missing point or
            required columns, non-numeric coordinates, a missing or conflicting CRS.
    """
    path = Path(path)
    if layer not in POINT_ROLES:
        raise BundleError(f"layer {layer!r} cannot be read in partitions; only {', '.join(POINT_ROLES)} can")
    if not path.exists():
        raise BundleError(f"bundle file {path} is missing; re-create the bundle or fix the manifest")
    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise BundleError(f"cannot read {path}: the file is truncated or corrupt ({type(exc).__name__}: {exc}); "
                          "re-create it") from exc
    schema = pf.schema_arrow
    names = tuple(schema.names)
    geo = _geo_metadata(schema)
    given = dict(geometry or {})
    unknown_roles = set(given) - set(POINT_ROLES[layer])
    if unknown_roles:
        raise BundleError(f"{path}: unknown point roles {sorted(unknown_roles)} for layer {layer!r}; "
                          f"roles: {', '.join(POINT_ROLES[layer])}")
    specs: list[tuple[str, PointSpec]] = []
    crss: dict[str, str] = {}
    for role in POINT_ROLES[layer]:
        spec: Any = given.get(role)
        if spec is None:
            wkb_col = geo.get("primary_column", "geometry") if role == "geometry" else role
            if wkb_col in names:
                spec = wkb_col
            elif set(XY_COLUMNS[role]) <= set(names):
                spec = XY_COLUMNS[role]
            else:
                continue
        if isinstance(spec, str):
            if spec not in names:
                raise BundleError(f"{path}: point column {spec!r} ({layer} {role}) is not in the file "
                                  f"(columns: {', '.join(names)})")
            if not (pa.types.is_binary(schema.field(spec).type) or pa.types.is_large_binary(schema.field(spec).type)):
                raise BundleError(f"{path}: column {spec!r} must hold WKB points (binary), "
                                  f"got {schema.field(spec).type}")
            crss[role] = _column_crs(path, geo, spec)
            specs.append((role, spec))
            continue
        xy = tuple(spec)
        if len(xy) != 2 or not set(xy) <= set(names):
            raise BundleError(f"{path}: coordinate columns {list(xy)} ({layer} {role}) are not in the file "
                              f"(columns: {', '.join(names)})")
        for c in xy:
            if not (pa.types.is_floating(schema.field(c).type) or pa.types.is_integer(schema.field(c).type)):
                raise BundleError(f"{path}: coordinate column {c!r} must be numeric, got {schema.field(c).type}")
        if crs is None:
            raise BundleError(f"{path}: the {layer} coordinates {list(xy)} have no CRS; name it in the manifest's "
                              f"layer entry (\"crs\": \"EPSG:...\") or pass crs=...")
        crss[role] = crs_string(crs)
        specs.append((role, (str(xy[0]), str(xy[1]))))
    if layer == "pois":
        if not specs:
            raise BundleError(f"{path}: the POI layer needs a WKB point column 'geometry' or coordinate columns "
                              f"'x' and 'y' (columns: {', '.join(names)})")
        if "category" not in names:
            raise BundleError(f"{path}: layer 'pois' lacks the required column 'category' "
                              f"(columns: {', '.join(names)})")
    else:
        roles = {r for r, _ in specs}
        ids = {"origin_region", "dest_region"} <= set(names)
        if roles != {"origin", "destination"} and not ids:
            raise BundleError(
                f"{path}: layer 'trips' needs origin and destination points (WKB columns 'origin'/'destination' "
                "or 'origin_x'/'origin_y'/'destination_x'/'destination_y') or zone-id columns "
                f"'origin_region'/'dest_region' (columns: {', '.join(names)})")
        if len(roles) == 1:
            raise BundleError(f"{path}: trips have {next(iter(roles))} points but not the other end; "
                              "give both origin and destination points")
    if len(set(crss.values())) > 1:
        raise BundleError(f"{path}: point columns are in different CRSs ({crss}); write them in one CRS")
    return ParquetLayer(path=path, layer=layer, geometry=tuple(specs),
                        crs=next(iter(crss.values())) if crss else None, columns=names,
                        rows=int(pf.metadata.num_rows), row_groups=int(pf.metadata.num_row_groups))


@functools.lru_cache(maxsize=32)
def _transformer(src: str, dst: str) -> pyproj.Transformer:
    return pyproj.Transformer.from_crs(pyproj.CRS.from_user_input(src), pyproj.CRS.from_user_input(dst),
                                       always_xy=True)


def crs_steps(layer_crs: Any, regions_crs: Any, metric_crs: Any) -> tuple[tuple[str, str], ...]:
    """The CRS transforms a layer's points go through: layer → regions' CRS → metric CRS.

    These are the steps the in-memory path takes (validation reprojects a layer to the regions'
    CRS, the graph build to the metric CRS), so both paths compute identical coordinates.
    Equal CRSs are skipped.
    """
    steps: list[tuple[str, str]] = []
    cur = pyproj.CRS.from_user_input(layer_crs)
    for nxt in (regions_crs, metric_crs):
        target = pyproj.CRS.from_user_input(nxt)
        if not cur.equals(target):
            steps.append((cur.to_json(), target.to_json()))
            cur = target
    return tuple(steps)


def batch_points(table: pa.Table, spec: PointSpec, steps: Sequence[tuple[str, str]] = ()
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coordinates of one batch's points, transformed through ``steps``.

    Returns:
        ``(x [P] float64, y [P] float64, non_point [P] bool)``: ``x``/``y`` are NaN where the
        point is missing, empty, not a point or not finite; ``non_point`` marks geometries of
        another type.
    """
    if isinstance(spec, str):
        wkb = np.asarray(table.column(spec).to_numpy(zero_copy_only=False), dtype=object)
        geoms = shapely.from_wkb(wkb)
        kind = shapely.get_type_id(geoms)
        pt = (kind == 0) & ~shapely.is_empty(geoms)
        x, y = np.full(len(geoms), np.nan), np.full(len(geoms), np.nan)
        x[pt], y[pt] = shapely.get_x(geoms[pt]), shapely.get_y(geoms[pt])
        non_point = kind > 0
    else:
        x = np.asarray(table.column(spec[0]).to_numpy(zero_copy_only=False), dtype=np.float64)
        y = np.asarray(table.column(spec[1]).to_numpy(zero_copy_only=False), dtype=np.float64)
        non_point = np.zeros(len(x), dtype=bool)
    ok = np.isfinite(x) & np.isfinite(y)
    if steps and ok.any():
        xs, ys = x[ok], y[ok]
        for src, dst in steps:
            xs, ys = _transformer(src, dst).transform(xs, ys)
        x, y = np.full(len(x), np.nan), np.full(len(y), np.nan)
        x[ok], y[ok] = xs, ys
    bad = ~(np.isfinite(x) & np.isfinite(y))
    if bad.any():  # the arrays may be read-only views of the Arrow buffers
        x, y = np.where(bad, np.nan, x), np.where(bad, np.nan, y)
    return x, y, non_point
