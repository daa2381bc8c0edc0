"""Reading OpenStreetMap ``.osm.pbf`` extracts into bundle layers with pyosmium (lazy import).

One streaming pass over the file (:func:`read_osm`) collects

* **POIs** – nodes carrying one of :data:`POI_KEYS`, plus closed ways and multipolygon
  relations carrying one (as their ``point_on_surface``); ``category`` is ``"key=value"`` of
  the first key of :data:`POI_KEYS` the object has (``"amenity=cafe"``).
* **roads** – ways tagged ``highway=*`` as LineStrings, ``class`` = the highway value. An
  extract clips ways at its border, so nodes without a location are common: each way is cut
  into its runs of consecutive located nodes (one row per run of >= 2 distinct points);
  ways with no such run are counted, not kept.
* **land use** – areas (closed ways and multipolygon relations, assembled by osmium) tagged
  ``landuse=*``, ``class`` = the landuse value.
* **buildings** – areas tagged ``building=*``, ``class`` = ``"building:<value>"``.

Every layer is EPSG:4326 and carries ``osm_type`` (node/way/relation) and ``osm_id``.
Everything skipped is counted in :attr:`OsmLayers.stats` (for the bundle's provenance).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import shapely

from urbanrep.errors import BundleError

log = logging.getLogger(__name__)

CRS = "EPSG:4326"
#: Tag keys that make an OSM object a POI, in priority order (the first present names the category).
POI_KEYS: tuple[str, ...] = ("amenity", "shop", "tourism", "leisure", "historic", "office", "craft", "healthcare")
LAYER_NAMES: tuple[str, ...] = ("pois", "roads", "landuse", "buildings")


@dataclass
class OsmLayers:
    """Layers read from one OSM extract (all EPSG:4326; a layer not asked for is ``None``).

    Attributes:
        pois: Point geometry, ``category`` (``"key=value"``), ``osm_type``, ``osm_id``.
        roads: LineString geometry, ``class`` (highway value), ``osm_id``.
        landuse: (Multi)Polygon geometry, ``class`` (landuse value), ``osm_type``, ``osm_id``.
        buildings: (Multi)Polygon geometry, ``class`` (``"building:<value>"``), ``osm_type``, ``osm_id``.
        bbox: ``(min_lon, min_lat, max_lon, max_lat)`` from the file header, or ``None`` when the
            header has no valid box.
        stats: Counts of what was read and skipped, for provenance.
    """

    pois: gpd.GeoDataFrame | None = None
    roads: gpd.GeoDataFrame | None = None
    landuse: gpd.GeoDataFrame | None = None
    buildings: gpd.GeoDataFrame | None = None
    bbox: tuple[float, float, float, float] | None = None
    stats: dict[str, int] = field(default_factory=dict)


def _import_osmium() -> Any:
    try:
        import osmium
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise BundleError("reading .osm.pbf files needs pyosmium: pip install 'urbanrep[osm]'") from exc
    return osmium


def header_bbox(path: str | Path) -> tuple[float, float, float, float] | None:
    """The bounding box stored in an OSM file header, or ``None`` if it has none."""
    osmium = _import_osmium()
    path = _check_path(path)
    reader = osmium.io.Reader(str(path), osmium.osm.osm_entity_bits.NOTHING)
    try:
        box = reader.header().box()
    finally:
        reader.close()
    if not box.valid():
        return None
    return (box.bottom_left.lon, box.bottom_left.lat, box.top_right.lon, box.top_right.lat)


def _check_path(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise BundleError(f"missing OSM file {path}; is the data root right (--data-root / URBANREP_DATA)?")
    return path


def _first_key(tags: Any, keys: Sequence[str]) -> str | None:
    for k in keys:
        if k in tags:
            return k
    return None


def _frame(geoms: Any, columns: dict[str, Any]) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(columns, geometry=gpd.GeoSeries(geoms, crs=CRS))


def read_osm(path: str | Path, layers: Collection[str] = LAYER_NAMES,
             poi_keys: Sequence[str] = POI_KEYS) -> OsmLayers:
    """Read POIs, roads, land-use and building polygons from an ``.osm.pbf`` extract.

    Args:
        path: The ``.osm.pbf`` (or ``.osm``) file.
        layers: Which of ``"pois"``, ``"roads"``, ``"landuse"``, ``"buildings"`` to build.
        poi_keys: Tag keys that make an object a POI, in priority order.

    Returns:
        The requested layers, the header bbox and the read/skip counts.

    Raises:
        BundleError: if the file is missing, unreadable, or ``layers`` names an unknown layer.
    """
    unknown = set(layers) - set(LAYER_NAMES)
    if unknown:
        raise BundleError(f"unknown OSM layers {sorted(unknown)}; choose from {', '.join(LAYER_NAMES)}")
    osmium = _import_osmium()
    path = _check_path(path)
    want_pois, want_roads = "pois" in layers, "roads" in layers
    want_lu, want_bld = "landuse" in layers, "buildings" in layers
    need_areas = want_pois or want_lu or want_bld
    fab = osmium.geom.WKBFactory()
    stats: dict[str, int] = {"poi_open_ways_skipped": 0, "area_failed": 0}
    candidates = {"landuse": 0, "buildings": 0, "landuse_open": 0, "buildings_open": 0}

    poi_xy: list[tuple[float, float]] = []
    poi_rows: list[tuple[str, str, int]] = []
    poi_area_wkb: list[str] = []
    poi_area_rows: list[tuple[str, str, int]] = []
    road_xy: list[tuple[float, float]] = []
    road_way: list[int] = []
    road_meta: list[tuple[str, int]] = []
    poly_wkb: dict[str, list[str]] = {"landuse": [], "buildings": []}
    poly_rows: dict[str, list[tuple[str, str, int]]] = {"landuse": [], "buildings": []}

    proc = osmium.FileProcessor(str(path)).with_locations()
    if need_areas:
        proc = proc.with_areas()
    try:
        for obj in proc:
            tags = obj.tags
            if obj.is_node():
                if want_pois:
                    key = _first_key(tags, poi_keys)
                    if key is not None and obj.location.valid():
                        poi_xy.append((obj.location.lon, obj.location.lat))
                        poi_rows.append((f"{key}={tags[key]}", "node", obj.id))
            elif obj.is_way():
                if want_roads and "highway" in tags:
                    w = len(road_meta)
                    road_meta.append((tags["highway"], obj.id))
                    for n in obj.nodes:
                        loc = n.location
                        road_xy.append((loc.lon, loc.lat) if loc.valid() else (np.nan, np.nan))
                        road_way.append(w)
                if want_pois and not obj.is_closed() and _first_key(tags, poi_keys) is not None:
                    stats["poi_open_ways_skipped"] += 1
                _count_polygon_candidate(tags, obj.is_closed(), want_lu, want_bld, candidates)
            elif obj.is_relation():
                if tags.get("type") in ("multipolygon", "boundary"):
                    _count_polygon_candidate(tags, True, want_lu, want_bld, candidates)
            elif obj.is_area():
                kinds = []
                if want_lu and "landuse" in tags:
                    kinds.append(("landuse", tags["landuse"]))
                if want_bld and "building" in tags:
                    kinds.append(("buildings", f"building:{tags['building']}"))
                key = _first_key(tags, poi_keys) if want_pois else None
                if not kinds and key is None:
                    continue
                osm_type = "way" if obj.from_way() else "relation"
                try:
                    wkb = fab.create_multipolygon(obj)
                except RuntimeError:
                    stats["area_failed"] += 1
                    continue
                for layer, cls in kinds:
                    poly_wkb[layer].append(wkb)
                    poly_rows[layer].append((cls, osm_type, obj.orig_id()))
                if key is not None:
                    poi_area_wkb.append(wkb)
                    poi_area_rows.append((f"{key}={tags[key]}", osm_type, obj.orig_id()))
    except RuntimeError as exc:
        raise BundleError(f"cannot read OSM file {path}: {exc}; is it a valid .osm.pbf?") from exc

    out = OsmLayers(bbox=header_bbox(path), stats=stats)
    if want_pois:
        pts = shapely.points(np.asarray(poi_xy, dtype=np.float64).reshape(-1, 2))
        area_pts = shapely.point_on_surface(shapely.from_wkb(poi_area_wkb)) if poi_area_wkb else np.empty(0, object)
        rows = poi_rows + poi_area_rows
        out.pois = _frame(np.concatenate([pts, area_pts]), {
            "category": [r[0] for r in rows], "osm_type": [r[1] for r in rows],
            "osm_id": np.asarray([r[2] for r in rows], dtype=np.int64)})
        stats["pois_nodes"] = len(poi_rows)
        stats["pois_areas"] = len(poi_area_rows)
    if want_roads:
        out.roads = _roads(np.asarray(road_xy, dtype=np.float64).reshape(-1, 2),
                           np.asarray(road_way, dtype=np.int64), road_meta, stats)
    for layer in ("landuse", "buildings"):
        if layer in layers:
            rows = poly_rows[layer]
            setattr(out, layer, _frame(shapely.from_wkb(poly_wkb[layer]) if rows else np.empty(0, object), {
                "class": [r[0] for r in rows], "osm_type": [r[1] for r in rows],
                "osm_id": np.asarray([r[2] for r in rows], dtype=np.int64)}))
            stats[f"{layer}_areas"] = len(rows)
            # Closed ways / multipolygon relations osmium could not assemble (clipped by the extract).
            stats[f"{layer}_not_assembled"] = max(candidates[layer] - len(rows), 0)
            stats[f"{layer}_open_ways_skipped"] = candidates[f"{layer}_open"]
    log.info("read %s: %s", path, stats)
    return out


def _count_polygon_candidate(tags: Any, closed: bool, want_lu: bool, want_bld: bool,
                             candidates: dict[str, int]) -> None:
    for layer, key, wanted in (("landuse", "landuse", want_lu), ("buildings", "building", want_bld)):
        if wanted and key in tags:
            candidates[layer if closed else f"{layer}_open"] += 1


def _roads(xy: np.ndarray, way: np.ndarray, meta: list[tuple[str, int]], stats: dict[str, int]) -> gpd.GeoDataFrame:
    """Cut each way into runs of consecutive located nodes and build one LineString per run.

    Args:
        xy: ``[P, 2]`` lon/lat of every way node in file order (NaN where the extract lacks it).
        way: ``[P]`` index of the way each node belongs to.
        meta: ``(highway value, osm id)`` per way.
    """
    valid = ~np.isnan(xy).any(axis=1)
    # A new run starts at every located node whose predecessor is unlocated or of another way.
    prev_same = np.zeros(len(way), dtype=bool)
    prev_same[1:] = (way[1:] == way[:-1]) & valid[:-1]
    run = np.cumsum(valid & ~prev_same) - 1
    run_v, xy_v, way_v = run[valid], xy[valid], way[valid]
    sizes = np.bincount(run_v, minlength=int(run_v.max()) + 1 if len(run_v) else 0)
    keep_pt = sizes[run_v] >= 2
    run_k = np.unique(run_v[keep_pt], return_inverse=True)[1]
    lines = shapely.linestrings(xy_v[keep_pt], indices=run_k) if keep_pt.any() else np.empty(0, object)
    run_way = np.zeros(int(run_k.max()) + 1 if len(run_k) else 0, dtype=np.int64)
    run_way[run_k] = way_v[keep_pt]
    nondegenerate = shapely.length(lines) > 0 if len(lines) else np.zeros(0, dtype=bool)
    lines, run_way = lines[nondegenerate], run_way[nondegenerate]
    has_unlocated = np.zeros(len(meta), dtype=bool)
    has_unlocated[way[~valid]] = True
    kept_ways = np.unique(run_way)
    stats["road_ways"] = len(meta)
    stats["road_ways_clipped"] = int(has_unlocated[kept_ways].sum())
    stats["road_ways_skipped_unlocated"] = len(meta) - len(kept_ways)
    stats["road_segments"] = len(lines)
    return _frame(lines, {"class": [meta[w][0] for w in run_way],
                          "osm_id": np.asarray([meta[w][1] for w in run_way], dtype=np.int64)})
