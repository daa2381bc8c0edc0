"""City bundle format v1: the names and rules every reader, writer and converter shares.

A bundle is a folder::

    manifest.json            name, crs, modalities, layers, aggregates, targets, provenance
    regions.parquet          GeoParquet: region_id, geometry (Polygon/MultiPolygon)
    pois.parquet             GeoParquet: geometry (Point), category (str)
    trips.parquet            GeoParquet: origin, destination (Point) and/or origin_region,
                             dest_region; optional time (timestamp), count (int)
    landuse.parquet          GeoParquet: geometry (Polygon), class (str)
    roads.parquet            GeoParquet: geometry (LineString), class (str)
    remote_sensing.parquet   GeoParquet: geometry (footprint or centre), image_path and/or feature
    street_view.parquet      GeoParquet: geometry (Point), image_path and/or feature
    aggregates/<name>.parquet  per-region vectors (region_id + numeric columns) or
                             region x region matrices in sparse long form
                             (origin_region, dest_region, value[, slice])
    targets.parquet          long: region_id, target, value (float, finite)
    labels.parquet           long: region_id, label, value (str)

Large point layers: ``pois.parquet`` may instead hold float columns ``x``, ``y`` (and
``category``) and ``trips.parquet`` ``origin_x``, ``origin_y``, ``destination_x``,
``destination_y`` (plus ``time``, ``count``, ``origin_region``, ``dest_region``), in the CRS
named by the layer's manifest entry (``"crs"``, default: the bundle's). Such layers, and any
point layer above 256 MiB or marked ``"partitioned": true``, are kept on disk and read by row
groups (:mod:`urbanrep.bundle.partitioned`).

See ``docs/bundle_spec.md`` for the full specification.
"""

from __future__ import annotations

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"

#: The six modalities urbanrep knows. Aggregated-level ones are summarised per region;
#: street view is the point-level modality (one node per image).
MODALITIES: tuple[str, ...] = ("poi", "mobility", "landuse", "road", "remote_sensing", "street_view")
AGGREGATED_MODALITIES: tuple[str, ...] = MODALITIES[:5]

#: Raw layers and the modality each one feeds.
RAW_LAYERS: dict[str, str] = {
    "pois": "poi",
    "trips": "mobility",
    "landuse": "landuse",
    "roads": "road",
    "remote_sensing": "remote_sensing",
    "street_view": "street_view",
}
#: Every layer name a bundle may hold.
LAYERS: tuple[str, ...] = ("regions", *RAW_LAYERS, "aggregates", "targets", "labels")

AGGREGATE_KINDS: tuple[str, ...] = ("vector", "matrix")

#: Geometry types allowed per raw layer (after make_valid repair).
GEOMETRY_TYPES: dict[str, tuple[str, ...]] = {
    "regions": ("Polygon", "MultiPolygon"),
    "pois": ("Point",),
    "landuse": ("Polygon", "MultiPolygon"),
    "roads": ("LineString", "MultiLineString"),
    "remote_sensing": ("Point", "Polygon", "MultiPolygon"),
    "street_view": ("Point",),
}

#: Columns a raw layer must have besides its geometry.
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "regions": ("region_id",),
    "pois": ("category",),
    "landuse": ("class",),
    "roads": ("class",),
    "trips": (),
    "remote_sensing": (),
    "street_view": (),
}

#: Layers with a class column, and that column (the keys of ``CityBundle.categories``).
CATEGORY_COLUMNS: dict[str, str] = {"pois": "category", "landuse": "class", "roads": "class"}

ID_COLUMNS = ("region_id", "origin_region", "dest_region")
