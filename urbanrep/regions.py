"""Regions made for you: H3 cells, square grids or your own polygons, clipped to a boundary.

Every function returns a GeoDataFrame with a unique ``region_id`` column and polygon
geometry, ready to be a bundle's ``regions`` layer:

* :func:`h3_regions` - H3 cells at a resolution (the ``h3`` package); ``region_id`` is the H3
  index (``"891126d3a6bffff"``), EPSG:4326. The cells cover the boundary (every cell that
  intersects it) and are clipped to it; the id still names the whole cell.
* :func:`square_grid` - square cells of ``size`` metres in a metric CRS (the boundary's UTM
  zone unless given); the grid is anchored at the CRS origin, so a cell's id never depends on
  the boundary: ``region_id`` = ``"<size>m_E<i>_N<j>"`` for the cell whose lower-left corner
  is ``(i * size, j * size)`` in that CRS (the CRS is the GeoDataFrame's, recorded in the
  bundle). Cells are clipped to the boundary.
* :func:`polygon_regions` - the user's polygons (a file or a GeoDataFrame), ``region_id``
  from a column, optionally clipped to a boundary.
* :func:`as_regions` - a GeoDataFrame indexed by ``region_id`` (as srai's regionalizers make
  them) turned into the column form.

A boundary (:func:`resolve_boundary`) is a vector file (the union of its polygons), a bbox
``(west, south, east, north)`` in degrees, or the bounding box in an OSM extract's header.

>>> from urbanrep.regions import h3_regions, resolve_boundary
>>> boundary = resolve_boundary(pbf="Helsinki.osm.pbf")
>>> regions = h3_regions(boundary, 9)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import shapely

from urbanrep.errors import BundleError

log = logging.getLogger(__name__)

__all__ = ["as_regions", "check_bbox", "h3_regions", "make_regions", "parse_regions_spec", "polygon_regions",
           "read_boundary", "resolve_boundary", "square_grid"]

WGS84 = "EPSG:4326"
#: Largest number of cells a grid may have before it is refused (a typo guard: h3:15 over a city).
MAX_CELLS = 2_000_000


def check_bbox(bbox: str | Sequence[float]) -> tuple[float, float, float, float]:
    """A ``(west, south, east, north)`` bbox in degrees, from a sequence or a ``"W,S,E,N"`` string.

    Raises:
        BundleError: if it is not four numbers, is outside the globe or is empty.
    """
    if isinstance(bbox, str):
        parts = [p for p in bbox.replace(" ", "").split(",") if p]
        try:
            values = [float(p) for p in parts]
        except ValueError as exc:
            raise BundleError(f"bbox {bbox!r}: expected four numbers W,S,E,N in degrees (e.g. "
                              "24.93,60.16,24.96,60.18)") from exc
    else:
        values = [float(v) for v in bbox]
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise BundleError(f"bbox {bbox!r}: expected four finite numbers W,S,E,N in degrees")
    w, s, e, n = values
    if not (-180 <= w <= 180 and -180 <= e <= 180 and -90 <= s <= 90 and -90 <= n <= 90):
        raise BundleError(f"bbox {bbox!r} is outside the globe; give W,S,E,N as longitude/latitude degrees")
    if w >= e or s >= n:
        raise BundleError(f"bbox {bbox!r} is empty: west must be < east and south < north (order W,S,E,N)")
    return (w, s, e, n)


def read_boundary(path: str | Path) -> gpd.GeoDataFrame:
    """A boundary file (any format geopandas reads) as one EPSG:4326 (Multi)Polygon.

    Raises:
        BundleError: if the file is missing, unreadable, has no CRS or no polygon.
    """
    path = Path(path)
    if not path.exists():
        raise BundleError(f"boundary file {path} does not exist")
    try:
        gdf = gpd.read_file(path)
    except Exception as exc:
        raise BundleError(f"cannot read boundary file {path}: {exc}") from exc
    if gdf.crs is None:
        raise BundleError(f"boundary file {path} has no CRS; add one (e.g. save it as GeoPackage with EPSG:4326)")
    polys = gdf.geometry[gdf.geometry.geom_type.isin(["Polygon", "MultiPolygon"])]
    if polys.empty:
        raise BundleError(f"boundary file {path} holds no polygon ({len(gdf)} features of types "
                          f"{sorted(set(gdf.geometry.geom_type.dropna()))})")
    geom = shapely.union_all(np.asarray(shapely.make_valid(polys.to_crs(WGS84).values), dtype=object))
    return gpd.GeoDataFrame({"name": [path.stem]}, geometry=[geom], crs=WGS84)


def resolve_boundary(boundary: str | Path | gpd.GeoDataFrame | None = None,
                     bbox: str | Sequence[float] | None = None,
                     pbf: str | Path | None = None) -> gpd.GeoDataFrame:
    """The area to cover: a boundary file or GeoDataFrame, else a bbox, else the extract's header bbox.

    Returns:
        A one-row EPSG:4326 GeoDataFrame.

    Raises:
        BundleError: if none is given, two are given, or the extract's header has no bbox.
    """
    if boundary is not None and bbox is not None:
        raise BundleError("give a boundary or a bbox, not both")
    if isinstance(boundary, gpd.GeoDataFrame):
        if boundary.crs is None:
            raise BundleError("the boundary GeoDataFrame has no CRS; set one (e.g. .set_crs('EPSG:4326'))")
        geom = shapely.union_all(np.asarray(boundary.to_crs(WGS84).geometry.values, dtype=object))
        return gpd.GeoDataFrame({"name": ["boundary"]}, geometry=[geom], crs=WGS84)
    if boundary is not None:
        return read_boundary(boundary)
    if bbox is not None:
        return gpd.GeoDataFrame({"name": ["bbox"]}, geometry=[shapely.box(*check_bbox(bbox))], crs=WGS84)
    if pbf is not None:
        from urbanrep.osm import header_bbox

        box = header_bbox(pbf)
        if box is None:
            raise BundleError(f"{pbf} has no bounding box in its header; give --bbox W,S,E,N or --boundary FILE")
        return gpd.GeoDataFrame({"name": [Path(pbf).name]}, geometry=[shapely.box(*box)], crs=WGS84)
    raise BundleError("no area given: pass a boundary file, a bbox or an OSM extract")


def _boundary_geom(boundary: gpd.GeoDataFrame | Any, crs: Any) -> Any:
    if isinstance(boundary, gpd.GeoDataFrame | gpd.GeoSeries):
        if boundary.crs is None:
            raise BundleError("the boundary has no CRS; set one (e.g. .set_crs('EPSG:4326'))")
        return shapely.union_all(np.asarray(boundary.to_crs(crs).geometry.values, dtype=object))
    return boundary  # a shapely geometry, taken to be in ``crs``


def _clip(gdf: gpd.GeoDataFrame, geom: Any) -> gpd.GeoDataFrame:
    """Cells cut to ``geom``; cells left with no area are dropped (their count is logged)."""
    cut = shapely.intersection(np.asarray(gdf.geometry.values, dtype=object), geom)
    # Keep polygonal parts only (an intersection can add lines or points along shared edges).
    cut = np.array([_polygonal(g) for g in cut], dtype=object)
    keep = ~shapely.is_empty(cut) & (shapely.area(cut) > 0)
    if (~keep).any():
        log.info("%d cells only touch the boundary and are left out", int((~keep).sum()))
    return gpd.GeoDataFrame(gdf.drop(columns="geometry").loc[keep].reset_index(drop=True),
                            geometry=cut[keep], crs=gdf.crs)


def _polygonal(geom: Any) -> Any:
    if geom is None or geom.geom_type in ("Polygon", "MultiPolygon"):
        return geom
    if geom.geom_type == "GeometryCollection":
        parts = [g for g in shapely.get_parts(geom) if g.geom_type in ("Polygon", "MultiPolygon")]
        return shapely.union_all(parts) if parts else shapely.Polygon()
    return shapely.Polygon()


def h3_regions(boundary: gpd.GeoDataFrame | Any, resolution: int, clip: bool = True) -> gpd.GeoDataFrame:
    """H3 cells covering ``boundary``: ``region_id`` = H3 index, EPSG:4326.

    Args:
        boundary: One-row GeoDataFrame (any CRS) or a shapely polygon in EPSG:4326.
        resolution: H3 resolution 0-15 (9: ~0.1 km² cells, edge ~200 m; 10: ~0.015 km²).
        clip: Cut the cells to the boundary (the id still names the whole cell).

    Returns:
        GeoDataFrame ``region_id`` (str), geometry; rows sorted by ``region_id``.

    Raises:
        BundleError: for a resolution outside 0-15, a missing ``h3`` package, an empty result
            or more than :data:`MAX_CELLS` cells.
    """
    try:
        import h3
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise BundleError("H3 regions need the h3 package: pip install 'urbanrep[osm]'") from exc
    if not isinstance(resolution, int | np.integer) or not 0 <= int(resolution) <= 15:
        raise BundleError(f"H3 resolution {resolution!r} is not an integer in 0..15 (e.g. h3:9)")
    geom = _boundary_geom(boundary, WGS84)
    area_km2 = _area_km2(geom)
    expected = area_km2 / h3.average_hexagon_area(int(resolution), unit="km^2")
    if expected > MAX_CELLS:
        raise BundleError(f"h3:{resolution} over this boundary ({area_km2:.0f} km²) gives about {expected:.0f} "
                          f"cells (more than {MAX_CELLS}); choose a coarser resolution")
    cells: set[str] = set()
    for part in shapely.get_parts(geom):
        cells.update(h3.h3shape_to_cells_experimental(h3.geo_to_h3shape(part), int(resolution), contain="overlap"))
    if not cells:
        raise BundleError(f"no H3 cell of resolution {resolution} intersects the boundary")
    ids = sorted(cells)
    rings = [[(lng, lat) for lat, lng in h3.cell_to_boundary(c)] for c in ids]
    polys = shapely.polygons(rings)
    gdf = gpd.GeoDataFrame({"region_id": ids}, geometry=polys, crs=WGS84)
    gdf = gdf.loc[shapely.intersects(np.asarray(gdf.geometry.values, dtype=object), geom)].reset_index(drop=True)
    return _clip(gdf, geom) if clip else gdf


def _area_km2(geom: Any) -> float:
    series = gpd.GeoSeries([geom], crs=WGS84)
    return float(series.to_crs(series.estimate_utm_crs()).area.iloc[0] / 1e6)


def square_grid(boundary: gpd.GeoDataFrame | Any, size: float, crs: Any = None, clip: bool = True) -> gpd.GeoDataFrame:
    """Square cells of ``size`` metres covering ``boundary``.

    Args:
        boundary: One-row GeoDataFrame (any CRS) or a shapely polygon in EPSG:4326.
        size: Cell edge in metres (> 0).
        crs: Metric CRS of the grid; ``None``: the boundary's UTM zone (``estimate_utm_crs``).
        clip: Cut the cells to the boundary.

    Returns:
        GeoDataFrame ``region_id`` (``"<size>m_E<i>_N<j>"``), geometry, in the grid's CRS; rows
        sorted by northing, then easting.

    Raises:
        BundleError: for a non-positive size, a CRS not in metres, or too many cells.
    """
    if not (isinstance(size, int | float) and math.isfinite(size) and size > 0):
        raise BundleError(f"square grid size {size!r} must be a positive number of metres (e.g. square:250)")
    b = boundary if isinstance(boundary, gpd.GeoDataFrame | gpd.GeoSeries) else gpd.GeoSeries([boundary], crs=WGS84)
    if b.crs is None:
        raise BundleError("the boundary has no CRS; set one (e.g. .set_crs('EPSG:4326'))")
    import pyproj

    target = pyproj.CRS.from_user_input(crs) if crs is not None else b.to_crs(WGS84).estimate_utm_crs()
    unit = target.axis_info[0].unit_name if target.axis_info else ""
    if not target.is_projected or unit not in ("metre", "meter"):
        raise BundleError(f"square grid CRS {target.to_string()} is not a projected CRS in metres; "
                          "give e.g. EPSG:3035 or leave it out for the UTM zone")
    geom = _boundary_geom(b, target)
    x0, y0, x1, y1 = geom.bounds
    i0, j0 = math.floor(x0 / size), math.floor(y0 / size)
    i1, j1 = math.ceil(x1 / size), math.ceil(y1 / size)
    count = (i1 - i0) * (j1 - j0)
    if count > MAX_CELLS:
        raise BundleError(f"square:{size:g} over this boundary gives {count} cells (more than {MAX_CELLS}); "
                          "choose a larger size")
    grid_j, grid_i = np.meshgrid(np.arange(j0, j1), np.arange(i0, i1), indexing="ij")
    ii, jj = grid_i.ravel(), grid_j.ravel()
    boxes = shapely.box(ii * size, jj * size, (ii + 1) * size, (jj + 1) * size)
    label = f"{size:g}"
    ids = np.array([f"{label}m_E{i}_N{j}" for i, j in zip(ii, jj, strict=True)], dtype=object)
    gdf = gpd.GeoDataFrame({"region_id": ids}, geometry=boxes, crs=target)
    gdf = gdf.loc[shapely.intersects(np.asarray(gdf.geometry.values, dtype=object), geom)].reset_index(drop=True)
    if gdf.empty:
        raise BundleError("no square cell intersects the boundary")
    return _clip(gdf, geom) if clip else gdf


def polygon_regions(polygons: str | Path | gpd.GeoDataFrame, id_column: str | None = None,
                    boundary: gpd.GeoDataFrame | None = None, clip: bool = True) -> gpd.GeoDataFrame:
    """The user's own polygons as regions.

    Args:
        polygons: A vector file (GeoPackage, GeoJSON, shapefile, GeoParquet) or a GeoDataFrame
            (a srai-style one indexed by ``region_id`` too).
        id_column: Column holding the region id; ``None``: ``region_id`` if present, else the
            row number (0..N-1, logged).
        boundary: Keep only polygons intersecting it (and cut them to it when ``clip``).
        clip: Cut the polygons to ``boundary``.

    Returns:
        GeoDataFrame ``region_id`` plus the other attribute columns, in the polygons' CRS.

    Raises:
        BundleError: for a missing file, no CRS, non-polygon geometry, or duplicate/missing ids.
    """
    where = str(polygons) if not isinstance(polygons, gpd.GeoDataFrame) else "the regions GeoDataFrame"
    if isinstance(polygons, gpd.GeoDataFrame):
        gdf = as_regions(polygons) if id_column is None and "region_id" not in polygons.columns else polygons.copy()
    else:
        path = Path(polygons)
        if not path.exists():
            raise BundleError(f"regions file {path} does not exist")
        try:
            gdf = gpd.read_parquet(path) if path.suffix == ".parquet" else gpd.read_file(path)
        except Exception as exc:
            raise BundleError(f"cannot read regions file {path}: {exc}") from exc
    if gdf.crs is None:
        raise BundleError(f"{where} has no CRS; set one (e.g. save the file with EPSG:4326)")
    bad = ~gdf.geometry.geom_type.isin(["Polygon", "MultiPolygon"])
    if bad.any():
        raise BundleError(f"{where}: {int(bad.sum())} features are not polygons (first: row {int(np.flatnonzero(bad)[0])}, "
                          f"{gdf.geometry.geom_type[bad].iloc[0]}); regions must be polygons")
    if id_column is not None:
        if id_column not in gdf.columns:
            raise BundleError(f"{where} has no column {id_column!r} (has: {', '.join(map(str, gdf.columns))})")
        gdf = gdf.rename(columns={id_column: "region_id"}) if id_column != "region_id" else gdf
    elif "region_id" not in gdf.columns:
        log.info("%s has no region_id column: region_id = row number 0..%d", where, len(gdf) - 1)
        gdf = gdf.assign(region_id=np.arange(len(gdf), dtype=np.int64))
    ids = gdf["region_id"]
    if ids.isna().any():
        raise BundleError(f"{where}: {int(ids.isna().sum())} regions have no id in column {id_column or 'region_id'!r}")
    dup = ids[ids.duplicated()]
    if len(dup):
        raise BundleError(f"{where}: region id {dup.iloc[0]!r} appears more than once ({len(dup)} duplicates); "
                          "ids must be unique (pick another --id-column)")
    cols = ["region_id", *[c for c in gdf.columns if c not in ("region_id", gdf.geometry.name)]]
    gdf = gpd.GeoDataFrame(gdf[cols].reset_index(drop=True), geometry=gdf.geometry.to_numpy(), crs=gdf.crs)
    if boundary is not None:
        geom = _boundary_geom(boundary, gdf.crs)
        keep = shapely.intersects(np.asarray(gdf.geometry.values, dtype=object), geom)
        if not keep.any():
            raise BundleError(f"no polygon of {where} intersects the boundary")
        if (~keep).any():
            log.info("%d of %d polygons lie outside the boundary and are left out", int((~keep).sum()), len(gdf))
        gdf = gdf.loc[keep].reset_index(drop=True)
        if clip:
            gdf = _clip(gdf, geom)
    return gdf.reset_index(drop=True)


def as_regions(gdf: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """A regions GeoDataFrame with ``region_id`` as a column (accepts srai's index form).

    Raises:
        BundleError: if there is neither a ``region_id`` column nor an index named ``region_id``.
    """
    if "region_id" in gdf.columns:
        return gdf.reset_index(drop=True)
    if gdf.index.name == "region_id":
        return gdf.reset_index()
    raise BundleError("regions need a 'region_id' column or index (srai's regionalizers name the index "
                      f"region_id); this GeoDataFrame has index {gdf.index.name!r} and columns "
                      f"{', '.join(map(str, gdf.columns))}")


def parse_regions_spec(spec: str) -> tuple[str, Any]:
    """``"h3:9"`` -> ``("h3", 9)``, ``"square:250"`` -> ``("square", 250.0)``, a path -> ``("file", path)``.

    Raises:
        BundleError: naming the valid forms when ``spec`` is none of them.
    """
    kind, sep, arg = spec.partition(":")
    if sep and kind == "h3":
        if not arg.isdigit():
            raise BundleError(f"--regions {spec!r}: the H3 resolution must be an integer 0..15 (e.g. h3:9)")
        return "h3", int(arg)
    if sep and kind == "square":
        try:
            return "square", float(arg.removesuffix("m"))
        except ValueError as exc:
            raise BundleError(f"--regions {spec!r}: the square size must be metres (e.g. square:250)") from exc
    path = Path(spec.removeprefix("file:"))
    if path.exists():
        return "file", path
    raise BundleError(f"--regions {spec!r} is not h3:<resolution>, square:<metres> or an existing polygon file")


def make_regions(spec: str | gpd.GeoDataFrame, boundary: gpd.GeoDataFrame, id_column: str | None = None,
                 clip: bool = True) -> gpd.GeoDataFrame:
    """Regions from a spec string (:func:`parse_regions_spec`) or a GeoDataFrame, over ``boundary``.

    A polygon file or GeoDataFrame is clipped to the boundary only when the boundary was given
    explicitly by the caller (pass ``clip=False`` to keep the polygons whole).
    """
    if isinstance(spec, gpd.GeoDataFrame):
        return polygon_regions(spec, id_column, boundary, clip)
    kind, arg = parse_regions_spec(spec)
    if kind == "h3":
        return h3_regions(boundary, arg, clip)
    if kind == "square":
        return square_grid(boundary, arg, clip=clip)
    return polygon_regions(arg, id_column, boundary, clip)
