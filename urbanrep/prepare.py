"""Any city from an OpenStreetMap extract: regions, OSM layers in the fixed vocabulary, targets.

:func:`prepare_osm` is what ``urbanrep prepare osm`` runs::

    from urbanrep.prepare import prepare_osm
    from urbanrep import write_bundle
    bundle = prepare_osm("Helsinki.osm.pbf", regions="h3:9")        # or "square:250", "my_areas.gpkg"
    write_bundle(bundle, "bundles/helsinki")

The bundle holds

* ``regions`` made by :mod:`urbanrep.regions` over the boundary (a file, a bbox, or the
  extract's header bbox);
* ``pois``, ``roads`` and ``landuse`` read by :func:`urbanrep.osm.read_osm` with the shipped
  vocabulary (``urbanrep-osm``), building footprints joining the land-use layer as
  ``building_*`` classes; ``categories`` fixes every layer's class list, so every city
  prepared this way gets the same feature columns and a model trained on one embeds another;
* ``targets`` (optional) from a table keyed by ``region_id`` or from a vector file
  interpolated onto the regions (:func:`targets_from_file`);
* ``provenance``: the regions rule, the boundary, the vocabulary id, every OSM read and skip
  count and the tags the vocabulary left unmapped (per tag).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from urbanrep.bundle import CityBundle
from urbanrep.errors import BundleError
from urbanrep.osm import header_bbox, read_osm
from urbanrep.regions import as_regions, make_regions, resolve_boundary
from urbanrep.vocabulary import DEFAULT_VOCABULARY, load_vocabulary

log = logging.getLogger(__name__)

__all__ = ["prepare_osm", "targets_from_file"]

#: Column names never taken as targets unless asked for by name.
ID_LIKE = ("id", "fid", "objectid", "index", "region_id", "gid", "ogc_fid")
#: Unmapped tags listed one by one in the provenance (the rest are summed).
UNMAPPED_LISTED = 50


def prepare_osm(
    pbf: str | Path,
    regions: str | gpd.GeoDataFrame = "h3:9",
    *,
    boundary: str | Path | gpd.GeoDataFrame | None = None,
    bbox: str | Sequence[float] | None = None,
    id_column: str | None = None,
    targets: str | Path | pd.DataFrame | None = None,
    target_columns: Sequence[str] | None = None,
    targets_kind: Literal["extensive", "intensive"] = "extensive",
    vocabulary: str = DEFAULT_VOCABULARY,
    buildings: bool = True,
    name: str | None = None,
) -> CityBundle:
    """A city bundle from an OpenStreetMap extract.

    Args:
        pbf: The ``.osm.pbf`` extract.
        regions: ``"h3:<resolution>"``, ``"square:<metres>"``, a polygon file, or a regions
            GeoDataFrame (a ``region_id`` column, or srai's ``region_id`` index).
        boundary: Area to cover: a polygon file or GeoDataFrame (cells are clipped to it; user
            polygons are kept where they intersect it and clipped).
        bbox: ``(west, south, east, north)`` in degrees (or ``"W,S,E,N"``), instead of a boundary.
            Neither: the extract's header bbox for H3/square regions; the polygons themselves
            for user polygons.
        id_column: Region id column of a polygon file (default ``region_id``, else the row number).
        targets: Optional targets: a table (CSV/Parquet, or a DataFrame) with ``region_id`` and
            numeric columns, or a vector file interpolated onto the regions (see
            :func:`targets_from_file`).
        target_columns: Which numeric columns become targets (default: every numeric column
            except id-like ones).
        targets_kind: How a vector file's values are interpolated: ``"extensive"`` (counts such as
            residents: area-weighted sums) or ``"intensive"`` (rates, densities: area-weighted means).
        vocabulary: Category vocabulary name (``"urbanrep-osm"``, or ``"urbanrep-osm/1"`` to pin a version).
        buildings: Add building footprints to the land-use layer (``building_*`` classes).
        name: Bundle name (default: the extract's file name without ``.osm.pbf``).

    Returns:
        An unvalidated :class:`~urbanrep.bundle.CityBundle` (``write_bundle`` validates it).

    Raises:
        BundleError: for a missing or unreadable file, a bad region spec, boundary or bbox, no
            region, or targets that name no region.
    """
    pbf = Path(pbf)
    vocab = load_vocabulary(vocabulary)
    layers = ("pois", "roads", "landuse", *(("buildings",) if buildings else ()))
    user_polygons = isinstance(regions, gpd.GeoDataFrame) or not str(regions).startswith(("h3:", "square:"))
    spec = as_regions(regions) if isinstance(regions, gpd.GeoDataFrame) else regions
    osm = None
    if user_polygons and boundary is None and bbox is None:
        gdf = make_regions(spec, None, id_column)  # type: ignore[arg-type]
        area = resolve_boundary(boundary=gdf)
        area_note = "the regions themselves"
    elif boundary is None and bbox is None and header_bbox(pbf) is None:
        # No header bbox: cover what the extract holds (one read, then kept to the regions).
        osm = read_osm(pbf, layers, vocabulary=vocab)
        extent = osm.extent()
        if extent is None:
            raise BundleError(f"{pbf} holds no POI, road, land-use or building to cover; give --bbox or --boundary")
        area = resolve_boundary(bbox=extent)
        area_note = f"the extent of the features in {pbf.name} (its header has no bbox)"
        gdf = make_regions(spec, area, id_column)
    else:
        area = resolve_boundary(boundary=boundary, bbox=bbox, pbf=pbf)
        area_note = (f"boundary file {boundary}" if isinstance(boundary, str | Path) else
                     "the boundary GeoDataFrame" if boundary is not None else
                     f"bbox {list(map(float, bbox.split(',') if isinstance(bbox, str) else bbox))}" if bbox is not None
                     else f"the header bbox of {pbf.name}")
        gdf = make_regions(spec, area, id_column)
    if gdf.empty:
        raise BundleError(f"no region over {area_note}")
    gdf = gdf.reset_index(drop=True)
    cover = shapely.union_all(np.asarray(gdf.to_crs("EPSG:4326").geometry.values, dtype=object))
    if osm is None:
        osm = read_osm(pbf, layers, boundary=cover, vocabulary=vocab)
    else:
        osm.keep_intersecting(cover)
    assert osm.pois is not None and osm.roads is not None and osm.landuse is not None
    landuse = osm.landuse.assign(osm_key="landuse")
    if buildings and osm.buildings is not None and len(osm.buildings):
        landuse = gpd.GeoDataFrame(pd.concat([landuse, osm.buildings.assign(osm_key="building")], ignore_index=True),
                                   geometry="geometry", crs=osm.landuse.crs)
    bundle_name = name or pbf.name.removesuffix(".pbf").removesuffix(".osm").lower()
    provenance: dict[str, Any] = {
        "description": f"{bundle_name}: OpenStreetMap extract {pbf.name} prepared by urbanrep prepare osm",
        "sources": [f"OpenStreetMap extract {pbf.name}"],
        "licences": {"OpenStreetMap": "ODbL 1.0, (c) OpenStreetMap contributors"},
        "regions": _regions_note(regions, id_column),
        "area": area_note,
        "area_bbox_lonlat": [round(v, 7) for v in area.total_bounds.tolist()],
        "vocabulary": vocab.id,
        "layer_rules": {
            "pois": "nodes and areas with " + "/".join(vocab.layer("pois").keys) + "; category = vocabulary class "
                    "(exact key=value rules before key=* rules); areas as point_on_surface; osm_tag keeps the tag",
            "roads": "highway=* ways as LineStrings clipped to the extract's located nodes; class = vocabulary class",
            "landuse": "landuse=* areas" + (" and building=* footprints (building_* classes; they overlap land-use "
                                            "polygons)" if buildings else "") + "; class = vocabulary class",
        },
        "osm_counts": osm.stats,
        "unmapped_tags": _unmapped(osm.unmapped),
    }
    bundle = CityBundle(name=bundle_name, regions=gdf, pois=osm.pois, roads=osm.roads, landuse=landuse,
                        categories=vocab.categories(["pois", "landuse", "roads"]), provenance=provenance)
    if targets is not None:
        table, note = targets_from_file(targets, gdf, target_columns, targets_kind)
        bundle.targets = table
        provenance["targets"] = note
    log.info("prepared %s: %d regions, %d POIs, %d road segments, %d land-use/building polygons", bundle_name,
             len(gdf), len(osm.pois), len(osm.roads), len(landuse))
    return bundle


def _regions_note(regions: str | gpd.GeoDataFrame, id_column: str | None) -> str:
    if isinstance(regions, gpd.GeoDataFrame):
        return "user regions (GeoDataFrame)"
    if regions.startswith("h3:"):
        return f"H3 cells of resolution {regions[3:]} covering the area, clipped to it; region_id = H3 index"
    if regions.startswith("square:"):
        return (f"square cells of {regions[7:]} m in the area's UTM CRS, anchored at the CRS origin, clipped to "
                "the area; region_id = '<size>m_E<i>_N<j>' (lower-left corner = i*size, j*size)")
    return f"user polygons from {regions} (region_id from {id_column or 'region_id or the row number'})"


def _unmapped(unmapped: dict[str, dict[str, int]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for layer, counts in unmapped.items():
        items = list(counts.items())
        listed = dict(items[:UNMAPPED_LISTED])
        rest = sum(v for _, v in items[UNMAPPED_LISTED:])
        out[layer] = {"total": sum(counts.values()), "by_tag": listed, **({"other_tags": rest} if rest else {})}
    return out


def targets_from_file(source: str | Path | pd.DataFrame, regions: gpd.GeoDataFrame,
                      columns: Sequence[str] | None = None,
                      kind: Literal["extensive", "intensive"] = "extensive") -> tuple[pd.DataFrame, dict[str, Any]]:
    """Targets for ``regions`` from a ``region_id`` table or from a vector file.

    * A table (CSV, Parquet without geometry, or a DataFrame) with ``region_id``: each numeric
      column is one target; rows naming no region are counted and left out.
    * A vector file (GeoPackage, GeoJSON, shapefile, GeoParquet) of polygons: values are moved
      onto the regions by area in a metric CRS. ``"extensive"`` values (counts) are split by
      the share of each source polygon's area inside the region and summed; ``"intensive"``
      values (rates) are averaged weighted by the overlapping area. A region that no source
      polygon overlaps gets no value (left out, counted). Points: extensive values are summed
      over the points inside each region, intensive ones averaged.

    Returns:
        ``(targets, note)``: the long ``region_id, target, value`` table and what was done, for
        the provenance.

    Raises:
        BundleError: for a missing/unreadable file, no numeric column, a named column that is
            absent, or a table whose ids match no region.
    """
    if kind not in ("extensive", "intensive"):
        raise BundleError(f"targets kind {kind!r}: choose 'extensive' (counts) or 'intensive' (rates, densities)")
    where = "the targets table" if isinstance(source, pd.DataFrame) else str(source)
    data = source if isinstance(source, pd.DataFrame) else _read_any(Path(source))
    cols = _target_columns(data, columns, where)
    ids = regions["region_id"]
    if not isinstance(data, gpd.GeoDataFrame):
        if "region_id" not in data.columns:
            raise BundleError(f"{where} has no 'region_id' column and no geometry; give a table keyed by the "
                              "regions' ids or a vector file to interpolate")
        key = data["region_id"]
        if pd.api.types.is_numeric_dtype(key) != pd.api.types.is_numeric_dtype(ids):
            key = key.astype(str)
            ids = ids.astype(str)
        known = key.isin(set(ids))
        if not known.any():
            raise BundleError(f"{where}: no region_id matches a region (e.g. {key.iloc[0]!r} vs {ids.iloc[0]!r})")
        dup = key[known & key.duplicated()]
        if len(dup):
            raise BundleError(f"{where}: region_id {dup.iloc[0]!r} appears more than once")
        table = data.loc[known, cols].assign(region_id=regions["region_id"].to_numpy()[
            pd.Index(ids).get_indexer(key[known])])
        note = {"source": where, "method": "table keyed by region_id", "columns": cols,
                "rows_naming_no_region": int((~known).sum())}
    else:
        table, note = _interpolate(data, regions, cols, kind, where)
    frames = []
    left_out: dict[str, int] = {}
    for c in cols:
        vals = pd.to_numeric(table[c], errors="coerce").to_numpy(dtype=np.float64)
        ok = np.isfinite(vals)
        left_out[c] = int(len(regions) - ok.sum())
        frames.append(pd.DataFrame({"region_id": table["region_id"].to_numpy()[ok], "target": c, "value": vals[ok]}))
    note["regions_without_value"] = left_out
    return pd.concat(frames, ignore_index=True), note


def _read_any(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise BundleError(f"targets file {path} does not exist")
    try:
        if path.suffix.lower() == ".csv":
            return pd.read_csv(path)
        if path.suffix.lower() == ".parquet":
            try:
                return gpd.read_parquet(path)
            except (ValueError, KeyError):
                return pd.read_parquet(path)
        return gpd.read_file(path)
    except BundleError:
        raise
    except Exception as exc:
        raise BundleError(f"cannot read targets file {path}: {exc}") from exc


def _target_columns(data: pd.DataFrame, columns: Sequence[str] | None, where: str) -> list[str]:
    if columns:
        missing = [c for c in columns if c not in data.columns]
        if missing:
            raise BundleError(f"{where} has no columns {missing} (has: {', '.join(map(str, data.columns))})")
        bad = [c for c in columns if not pd.api.types.is_numeric_dtype(data[c])]
        if bad:
            raise BundleError(f"{where}: target columns {bad} are not numeric")
        return list(columns)
    geom = data.geometry.name if isinstance(data, gpd.GeoDataFrame) else None
    cols = [c for c in data.columns if c != geom and str(c).lower() not in ID_LIKE
            and pd.api.types.is_numeric_dtype(data[c]) and not pd.api.types.is_bool_dtype(data[c])]
    if not cols:
        raise BundleError(f"{where} has no numeric column to use as a target (has: {', '.join(map(str, data.columns))})")
    log.info("targets from %s: columns %s", where, cols)
    return cols


def _interpolate(src: gpd.GeoDataFrame, regions: gpd.GeoDataFrame, cols: list[str], kind: str, where: str
                 ) -> tuple[pd.DataFrame, dict[str, Any]]:
    if src.crs is None:
        raise BundleError(f"{where} has no CRS; set one (e.g. save it with EPSG:4326)")
    metric = regions.crs if regions.crs is not None and regions.crs.is_projected else regions.estimate_utm_crs()
    reg = regions.to_crs(metric)
    s = src.to_crs(metric)
    geoms = np.asarray(s.geometry.values, dtype=object)
    values = s[cols].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    n = len(reg)
    tree = shapely.STRtree(np.asarray(reg.geometry.values, dtype=object))
    points = shapely.get_type_id(geoms) == 0
    if points.all():
        i, j = tree.query(geoms, predicate="within")
        weight = np.ones(len(i))
        method = "points summed per region" if kind == "extensive" else "points averaged per region"
    elif not points.any():
        i, j = tree.query(geoms, predicate="intersects")
        inter = shapely.area(shapely.intersection(geoms[i], tree.geometries[j]))
        src_area = shapely.area(geoms[i])
        share = np.divide(inter, src_area, out=np.zeros(len(i)), where=src_area > 0)
        # Overlaps below 1e-9 of a source polygon are reprojection noise along shared edges, not data.
        share[share < 1e-9] = 0
        weight = share if kind == "extensive" else np.where(share > 0, inter, 0)
        method = ("area-weighted sum (each source value split by the share of its area in the region)"
                  if kind == "extensive" else "area-weighted mean of the overlapping source polygons")
    else:
        raise BundleError(f"{where} mixes points and polygons; use one geometry type for targets")
    keep = weight > 0
    i, j, weight = i[keep], j[keep], weight[keep]
    out = pd.DataFrame({"region_id": regions["region_id"].to_numpy()})
    for k, c in enumerate(cols):
        v = values[i, k]
        ok = np.isfinite(v)
        total = np.bincount(j[ok], weights=v[ok] * weight[ok], minlength=n)
        wsum = np.bincount(j[ok], weights=weight[ok], minlength=n)
        covered = np.bincount(j[ok], minlength=n) > 0
        res = total if kind == "extensive" else np.divide(total, wsum, out=np.zeros(n), where=wsum > 0)
        out[c] = np.where(covered, res, np.nan)
    return out, {"source": where, "method": method, "kind": kind, "columns": cols, "source_features": len(src),
                 "source_features_touching_no_region": int(len(src) - len(np.unique(i)))}
