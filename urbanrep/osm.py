"""Reading OpenStreetMap ``.osm.pbf`` extracts into bundle layers (pyosmium, lazy import).

One streaming pass over the file (:func:`read_osm`) collects

* **POIs**: nodes carrying one of the POI keys, plus closed ways and multipolygon relations
  carrying one (as their ``point_on_surface``). ``category`` is ``"key=value"`` of the first
  POI key the object has (``"amenity=cafe"``), or, with a ``vocabulary``, the vocabulary's
  class (``"cafe"``; the tag stays in ``osm_tag``).
* **roads**: ways tagged ``highway=*`` as LineStrings, ``class`` = the highway value (or the
  vocabulary class). An extract clips ways at its border, so nodes without a location are
  common: each way is cut into its runs of consecutive located nodes (one row per run of >= 2
  distinct points); ways with no such run are counted, not kept.
* **land use**: areas (closed ways and multipolygon relations, assembled by osmium) tagged
  ``landuse=*``, ``class`` = the value (or the vocabulary class).
* **buildings**: areas tagged ``building=*``, ``class`` = ``"building:<value>"`` (or the
  vocabulary class).

Every layer is EPSG:4326 and carries ``osm_type`` (node/way/relation) and ``osm_id``.
A ``bbox`` or ``boundary`` keeps only the features that intersect it (features are not cut:
the graph build measures what lies inside each region). Everything skipped is counted in
:attr:`OsmLayers.stats`: open ways that cannot be areas, areas osmium could not assemble
(clipped by the extract), features outside the boundary, and tags the vocabulary does not map
(per tag, in :attr:`OsmLayers.unmapped`).

Speed: osmium filters by tag key in C++ before Python sees an object, so Python handles only
the tagged objects of interest; node locations are cached in memory (``flex_mem``), which
suits city and regional extracts (see ``experiments/bench_osm.py`` for measured figures).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import shapely

from urbanrep.errors import BundleError
from urbanrep.progress import start_progress
from urbanrep.vocabulary import LayerVocabulary, Vocabulary, load_vocabulary

log = logging.getLogger(__name__)

__all__ = ["LAYER_NAMES", "POI_KEYS", "OsmLayers", "header_bbox", "read_osm"]

CRS = "EPSG:4326"
#: Tag keys that make an OSM object a POI, in priority order (the first present names the category).
POI_KEYS: tuple[str, ...] = ("amenity", "shop", "tourism", "leisure", "historic", "office", "craft", "healthcare")
LAYER_NAMES: tuple[str, ...] = ("pois", "roads", "landuse", "buildings")
#: Python-visible objects between two progress updates.
_PROGRESS_EVERY = 20_000


@dataclass
class OsmLayers:
    """Layers read from one OSM extract (all EPSG:4326; a layer not asked for is ``None``).

    Attributes:
        pois: Point geometry, ``category``, ``osm_type``, ``osm_id`` (+ ``osm_tag`` with a vocabulary).
        roads: LineString geometry, ``class``, ``osm_id`` (+ ``osm_tag``).
        landuse: (Multi)Polygon geometry, ``class``, ``osm_type``, ``osm_id`` (+ ``osm_tag``).
        buildings: (Multi)Polygon geometry, ``class``, ``osm_type``, ``osm_id`` (+ ``osm_tag``).
        bbox: ``(min_lon, min_lat, max_lon, max_lat)`` from the file header, or ``None`` when the
            header has no valid box.
        stats: Counts of what was read and skipped, for provenance.
        unmapped: Per layer, ``"key=value"`` -> objects left out because the vocabulary maps
            no class to them (empty without a vocabulary).
        vocabulary: ``"name/version"`` of the vocabulary used, or ``None``.
    """

    pois: gpd.GeoDataFrame | None = None
    roads: gpd.GeoDataFrame | None = None
    landuse: gpd.GeoDataFrame | None = None
    buildings: gpd.GeoDataFrame | None = None
    bbox: tuple[float, float, float, float] | None = None
    stats: dict[str, int] = field(default_factory=dict)
    unmapped: dict[str, dict[str, int]] = field(default_factory=dict)
    vocabulary: str | None = None

    def keep_intersecting(self, area: Any) -> None:
        """Keep the features intersecting ``area`` (shapely, EPSG:4326); count the others in :attr:`stats`."""
        shapely.prepare(area)
        for layer in LAYER_NAMES:
            df = getattr(self, layer)
            if df is not None and len(df):
                keep = shapely.intersects(area, np.asarray(df.geometry.values, dtype=object))
                self.stats[f"{layer}_outside_boundary"] = int((~keep).sum())
                setattr(self, layer, df.loc[keep].reset_index(drop=True))

    def extent(self) -> tuple[float, float, float, float] | None:
        """``(west, south, east, north)`` of every feature read (``None`` when nothing was read)."""
        boxes = [df.total_bounds for lay in LAYER_NAMES if (df := getattr(self, lay)) is not None and len(df)]
        if not boxes:
            return None
        b = np.vstack(boxes)
        return (float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max()))


def _import_osmium() -> Any:
    try:
        import osmium
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise BundleError("reading .osm.pbf files needs pyosmium: pip install 'urbanrep[osm]'") from exc
    return osmium


def _check_path(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise BundleError(f"missing OSM file {path}; check the path (a .osm.pbf extract, e.g. from Geofabrik)")
    if path.is_dir():
        raise BundleError(f"{path} is a folder; give the .osm.pbf file itself")
    return path


def header_bbox(path: str | Path) -> tuple[float, float, float, float] | None:
    """The bounding box stored in an OSM file header, or ``None`` if it has none."""
    osmium = _import_osmium()
    path = _check_path(path)
    try:
        reader = osmium.io.Reader(str(path), osmium.osm.osm_entity_bits.NOTHING)
    except RuntimeError as exc:
        raise BundleError(f"cannot read OSM file {path}: {exc}; is it a valid .osm.pbf?") from exc
    try:
        box = reader.header().box()
    finally:
        reader.close()
    if not box.valid():
        return None
    return (box.bottom_left.lon, box.bottom_left.lat, box.top_right.lon, box.top_right.lat)


def _first_key(tags: Any, keys: Sequence[str]) -> str | None:
    for k in keys:
        if k in tags:
            return k
    return None


def _frame(geoms: Any, columns: dict[str, Any]) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(columns, geometry=gpd.GeoSeries(geoms, crs=CRS))


class _Classifier:
    """Class of an object for one layer: the raw tag without a vocabulary, else the vocabulary class."""

    def __init__(self, layer: str, keys: Sequence[str], vocab: LayerVocabulary | None, prefix: str = "") -> None:
        self.keys = tuple(vocab.keys) if vocab is not None else tuple(keys)
        self.vocab = vocab
        self.prefix = prefix
        self.unmapped: Counter[str] = Counter()

    def wants(self, tags: Any) -> str | None:
        """The tag key that makes the object belong to the layer (``None``: it does not)."""
        return _first_key(tags, self.keys)

    def classify(self, tags: Any, key: str) -> tuple[str | None, str]:
        """``(class or None if unmapped, "key=value" of the deciding tag)``."""
        tag = f"{key}={tags[key]}"
        if self.vocab is None:
            value = tags[key]
            return (f"{self.prefix}{value}" if self.prefix else (tag if len(self.keys) > 1 else value)), tag
        # Several keys (POIs): exact rules of any key beat wildcards; one key: that key's rule.
        cls = self.vocab.match(tags) if len(self.keys) > 1 else self.vocab.match_tag(tag)
        if cls is None:
            self.unmapped[tag] += 1
        return cls, tag


def read_osm(path: str | Path, layers: Collection[str] = LAYER_NAMES, *,
             bbox: Sequence[float] | None = None, boundary: Any = None,
             vocabulary: Vocabulary | str | None = None,
             poi_keys: Sequence[str] = POI_KEYS) -> OsmLayers:
    """Read POIs, roads, land-use and building polygons from an ``.osm.pbf`` extract.

    Args:
        path: The ``.osm.pbf`` (or ``.osm``) file.
        layers: Which of ``"pois"``, ``"roads"``, ``"landuse"``, ``"buildings"`` to build.
        bbox: ``(west, south, east, north)`` in degrees: keep only features intersecting it.
        boundary: A shapely (Multi)Polygon in EPSG:4326 or a GeoDataFrame/GeoSeries (any CRS,
            its union is used): keep only features intersecting it.
        vocabulary: A :class:`~urbanrep.vocabulary.Vocabulary` or its name (``"urbanrep-osm"``,
            ``"urbanrep-osm/1"``): classes become the vocabulary's; objects whose tags it does
            not map are left out and counted in :attr:`OsmLayers.unmapped`. ``None``: raw tags.
        poi_keys: Tag keys that make an object a POI, in priority order (without a vocabulary;
            with one, the vocabulary's keys).

    Returns:
        The requested layers, the header bbox and the read/skip counts.

    Raises:
        BundleError: if the file is missing, unreadable, or ``layers`` names an unknown layer.
    """
    unknown = set(layers) - set(LAYER_NAMES)
    if unknown:
        raise BundleError(f"unknown OSM layers {sorted(unknown)}; choose from {', '.join(LAYER_NAMES)}")
    vocab = load_vocabulary(vocabulary) if isinstance(vocabulary, str) else vocabulary
    area_filter = _boundary_geometry(bbox, boundary)
    osmium = _import_osmium()
    path = _check_path(path)
    want_pois, want_roads = "pois" in layers, "roads" in layers
    want_lu, want_bld = "landuse" in layers, "buildings" in layers
    need_areas = want_pois or want_lu or want_bld
    lu_vocab = vocab.layer("landuse") if vocab is not None and (want_lu or want_bld) else None
    poi_c = _Classifier("pois", poi_keys, vocab.layer("pois") if vocab is not None and want_pois else None)
    road_c = _Classifier("roads", ("highway",), vocab.layer("roads") if vocab is not None and want_roads else None)
    lu_c = _Classifier("landuse", ("landuse",), lu_vocab)
    bld_c = _Classifier("buildings", ("building",), lu_vocab, prefix="building:")
    if lu_vocab is not None:  # one vocabulary layer covers both keys; each classifier reads its own key
        lu_c.keys, bld_c.keys = ("landuse",), ("building",)
    fab = osmium.geom.WKBFactory()
    stats: dict[str, int] = {"poi_open_ways_skipped": 0, "area_failed": 0}
    candidates = {"landuse": 0, "buildings": 0, "landuse_open": 0, "buildings_open": 0}

    poi_xy: list[tuple[float, float]] = []
    poi_rows: list[tuple[str, str, str, int]] = []
    poi_area_wkb: list[bytes] = []
    poi_area_rows: list[tuple[str, str, str, int]] = []
    road_xy: list[tuple[float, float]] = []
    road_way: list[int] = []
    road_meta: list[tuple[str, str, int, int]] = []  # class, tag, osm id, way order (clipped ways)
    road_wkb: list[bytes] = []
    road_full: list[tuple[str, str, int, int]] = []  # the same for ways with every node located
    keep_all = osmium.geom.use_nodes.ALL
    poly_wkb: dict[str, list[bytes]] = {"landuse": [], "buildings": []}
    poly_rows: dict[str, list[tuple[str, str, str, int]]] = {"landuse": [], "buildings": []}

    keys = set()
    if want_pois:
        keys |= set(poi_c.keys)
    if want_roads:
        keys.add("highway")
    if want_lu:
        keys.add("landuse")
    if want_bld:
        keys.add("building")
    proc = osmium.FileProcessor(str(path)).with_locations()
    if need_areas:
        proc = proc.with_areas(osmium.filter.KeyFilter(*sorted(keys - {"highway"}) or ["landuse"]))
    # Location and area handlers see every object; the key filters run after them (in C++): nodes
    # only as POIs, ways, relations and areas with any wanted key.
    if want_pois:
        proc = proc.with_filter(osmium.filter.KeyFilter(*sorted(poi_c.keys)).enable_for(osmium.osm.NODE))
    else:
        proc = proc.with_filter(osmium.filter.EntityFilter(osmium.osm.WAY | osmium.osm.RELATION | osmium.osm.AREA))
    proc = proc.with_filter(osmium.filter.KeyFilter(*sorted(keys)).enable_for(
        osmium.osm.WAY | osmium.osm.RELATION | osmium.osm.AREA))
    bar = start_progress(f"reading {path.name}")
    seen = 0
    try:
        for obj in proc:
            seen += 1
            if seen % _PROGRESS_EVERY == 0:
                bar.update(_PROGRESS_EVERY)
            tags = obj.tags
            if obj.is_node():
                if want_pois:
                    key = poi_c.wants(tags)
                    if key is not None and obj.location.valid():
                        cls, tag = poi_c.classify(tags, key)
                        if cls is not None:
                            poi_xy.append((obj.location.lon, obj.location.lat))
                            poi_rows.append((cls, tag, "node", obj.id))
            elif obj.is_way():
                if want_roads and "highway" in tags:
                    cls, tag = road_c.classify(tags, "highway")
                    if cls is not None:
                        try:  # every node located (the common case): one C++ call
                            road_wkb.append(fab.create_linestring(obj, keep_all))
                            road_full.append((cls, tag, obj.id, len(road_full) + len(road_meta)))
                        except (osmium.InvalidLocationError, RuntimeError):
                            # Clipped by the extract (or degenerate): cut into runs of located nodes.
                            w = len(road_meta)
                            road_meta.append((cls, tag, obj.id, len(road_full) + len(road_meta)))
                            for n in obj.nodes:
                                loc = n.location
                                road_xy.append((loc.lon, loc.lat) if loc.valid() else (np.nan, np.nan))
                                road_way.append(w)
                if want_pois and not obj.is_closed() and poi_c.wants(tags) is not None:
                    stats["poi_open_ways_skipped"] += 1
                _count_polygon_candidate(tags, obj.is_closed(), want_lu, want_bld, candidates)
            elif obj.is_relation():
                if tags.get("type") in ("multipolygon", "boundary"):
                    _count_polygon_candidate(tags, True, want_lu, want_bld, candidates)
            elif obj.is_area():
                kinds = []
                if want_lu and "landuse" in tags:
                    kinds.append(("landuse", *lu_c.classify(tags, "landuse")))
                if want_bld and "building" in tags:
                    kinds.append(("buildings", *bld_c.classify(tags, "building")))
                key = poi_c.wants(tags) if want_pois else None
                poi_cls = poi_c.classify(tags, key) if key is not None else None
                kinds = [k for k in kinds if k[1] is not None]
                if not kinds and (poi_cls is None or poi_cls[0] is None):
                    continue
                osm_type = "way" if obj.from_way() else "relation"
                try:
                    wkb = fab.create_multipolygon(obj)
                except RuntimeError:
                    stats["area_failed"] += 1
                    continue
                for layer, cls, tag in kinds:
                    poly_wkb[layer].append(wkb)
                    poly_rows[layer].append((str(cls), tag, osm_type, obj.orig_id()))
                if poi_cls is not None and poi_cls[0] is not None:
                    poi_area_wkb.append(wkb)
                    poi_area_rows.append((str(poi_cls[0]), poi_cls[1], osm_type, obj.orig_id()))
    except RuntimeError as exc:
        raise BundleError(f"cannot read OSM file {path}: {exc}; is it a valid .osm.pbf?") from exc
    finally:
        bar.update(seen % _PROGRESS_EVERY)
        bar.close()
    stats["objects_seen"] = seen

    out = OsmLayers(bbox=header_bbox(path), stats=stats, vocabulary=vocab.id if vocab is not None else None)
    extra = vocab is not None
    if want_pois:
        pts = shapely.points(np.asarray(poi_xy, dtype=np.float64).reshape(-1, 2))
        area_pts = shapely.point_on_surface(shapely.from_wkb(poi_area_wkb)) if poi_area_wkb else np.empty(0, object)
        rows = poi_rows + poi_area_rows
        out.pois = _frame(np.concatenate([pts, area_pts]), _columns(rows, "category", extra))
        stats["pois_nodes"] = len(poi_rows)
        stats["pois_areas"] = len(poi_area_rows)
    if want_roads:
        out.roads = _roads(np.asarray(road_xy, dtype=np.float64).reshape(-1, 2),
                           np.asarray(road_way, dtype=np.int64), road_meta, stats, extra,
                           full=(shapely.from_wkb(road_wkb) if road_wkb else np.empty(0, object), road_full))
    for layer in ("landuse", "buildings"):
        if layer in layers:
            rows = poly_rows[layer]
            setattr(out, layer, _frame(shapely.from_wkb(poly_wkb[layer]) if rows else np.empty(0, object),
                                       _columns(rows, "class", extra)))
            stats[f"{layer}_areas"] = len(rows)
            # Closed ways / multipolygon relations osmium could not assemble (clipped by the extract).
            stats[f"{layer}_not_assembled"] = max(candidates[layer] - len(rows) - sum(
                (lu_c if layer == "landuse" else bld_c).unmapped.values()), 0)
            stats[f"{layer}_open_ways_skipped"] = candidates[f"{layer}_open"]
    if vocab is not None:
        out.unmapped = {name: dict(c.most_common()) for name, c in
                        (("pois", poi_c.unmapped), ("roads", road_c.unmapped), ("landuse", lu_c.unmapped),
                         ("buildings", bld_c.unmapped)) if c}
        for name, counts in out.unmapped.items():
            stats[f"{name}_unmapped"] = sum(counts.values())
    if area_filter is not None:
        out.keep_intersecting(area_filter)
    log.info("read %s: %s", path, stats)
    return out


def _columns(rows: list[tuple[str, str, str, int]], name: str, with_tag: bool) -> dict[str, Any]:
    cols: dict[str, Any] = {name: [r[0] for r in rows]}
    if with_tag:
        cols["osm_tag"] = [r[1] for r in rows]
    cols["osm_type"] = [r[2] for r in rows]
    cols["osm_id"] = np.asarray([r[3] for r in rows], dtype=np.int64)
    return cols


def _boundary_geometry(bbox: Sequence[float] | None, boundary: Any) -> Any:
    """One prepared EPSG:4326 geometry from a bbox or a boundary (``None`` when neither)."""
    if bbox is not None and boundary is not None:
        raise BundleError("give a bbox or a boundary, not both")
    geom = None
    if bbox is not None:
        from urbanrep.regions import check_bbox

        geom = shapely.box(*check_bbox(bbox))
    elif boundary is not None:
        if isinstance(boundary, gpd.GeoDataFrame | gpd.GeoSeries):
            if boundary.crs is None:
                raise BundleError("the boundary has no CRS; set one (e.g. .set_crs('EPSG:4326'))")
            geom = shapely.union_all(np.asarray(boundary.to_crs(CRS).geometry.values, dtype=object))
        else:
            geom = boundary
    if geom is not None:
        shapely.prepare(geom)
    return geom


def _count_polygon_candidate(tags: Any, closed: bool, want_lu: bool, want_bld: bool,
                             candidates: dict[str, int]) -> None:
    for layer, key, wanted in (("landuse", "landuse", want_lu), ("buildings", "building", want_bld)):
        if wanted and key in tags:
            candidates[layer if closed else f"{layer}_open"] += 1


def _roads(xy: np.ndarray, way: np.ndarray, meta: list[tuple[str, str, int, int]], stats: dict[str, int],
           with_tag: bool = False,
           full: tuple[np.ndarray, list[tuple[str, str, int, int]]] | None = None) -> gpd.GeoDataFrame:
    """Road LineStrings: whole ways, plus clipped ways cut into runs of consecutive located nodes.

    Args:
        xy: ``[P, 2]`` lon/lat of every node of the clipped ways in file order (NaN where the
            extract lacks it).
        way: ``[P]`` index into ``meta`` of the way each node belongs to.
        meta: ``(class, "highway=value", osm id, way order)`` per clipped way.
        stats: Counts, updated in place.
        with_tag: Add the ``osm_tag`` column.
        full: ``(lines, meta)`` of the ways whose nodes are all located, built whole.

    Returns:
        One row per line in way order (the order of the ways in the file), runs in node order.
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
    full_lines, full_meta = full if full is not None else (np.empty(0, object), [])
    stats["road_ways"] = len(meta) + len(full_meta)
    stats["road_ways_clipped"] = int(has_unlocated[kept_ways].sum())
    stats["road_ways_skipped_unlocated"] = len(meta) - len(kept_ways)
    stats["road_segments"] = len(lines) + len(full_lines)
    rows = [meta[w] for w in run_way] + list(full_meta)
    geoms = np.concatenate([lines, full_lines]) if len(full_lines) else lines
    order = np.argsort(np.asarray([r[3] for r in rows], dtype=np.int64), kind="stable")
    rows = [rows[i] for i in order]
    cols: dict[str, Any] = {"class": [r[0] for r in rows]}
    if with_tag:
        cols["osm_tag"] = [r[1] for r in rows]
    cols["osm_id"] = np.asarray([r[2] for r in rows], dtype=np.int64)
    return _frame(geoms[order] if len(geoms) else geoms, cols)
