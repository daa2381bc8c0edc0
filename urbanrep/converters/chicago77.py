"""Chicago-77: the 77 community areas with HAFusion's POI, land-use and taxi OD aggregates.

Source folder layout (``<data root>/chicago77``)::

    poi_dist.npy (77, 26)        POI counts in 26 categories
    landUse_dist.npy (77, 12)    land-use counts in 12 classes
    mob-adj.npy (77, 77)         taxi OD trip counts (5.50 M trips)
    mob_dist.npy (77, 77)        a second taxi OD trip-count matrix (3.38 M trips)
    check_counts.npy, crime_counts.npy, serviceCall_counts.npy (77,)   targets
    regions_chicago77/Chicago77.shp   community-area polygons (libpysal example, no .prj)

Array row ``i`` is the community area with ``AREA_NUMBE == i + 1`` (inferred by the data
README: the top crime row 24 is Austin, area 25; the top check-in rows 7 and 31 are Near
North Side, 8, and the Loop, 32). Region ids are the area numbers 1..77 and the regions are
sorted by them, so region order equals array order.

The shapefile ships without a ``.prj``; its coordinates are Illinois State Plane East in US
feet, so the CRS EPSG:3435 is *assigned* (not transformed) here.

Both OD matrices are integer trip counts of the same flows (correlation 0.99 cell by cell)
from different, undocumented extracts; HAFusion reads ``mob_dist`` as the region mobility
feature and ``mob-adj`` as the target of its mobility loss with rows as origins, the
convention kept here. ``poi_simi.npy`` and ``landUse_simi.npy`` (cosine similarities of the
POI and land-use counts) are not read: the ETL computes similarities itself.
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd

from urbanrep.bundle import Aggregate, CityBundle
from urbanrep.converters._common import (
    load_npy,
    matrix_table,
    read_vector,
    require_columns,
    targets_long,
    vector_table,
)
from urbanrep.errors import BundleError

NAME = "chicago77"
N = 77
CRS = "EPSG:3435"
SHAPEFILE = "regions_chicago77/Chicago77.shp"
#: Files not read: similarities the ETL recomputes from the counts.
SKIPPED_FILES = ("poi_simi.npy", "landUse_simi.npy")
TARGET_FILES = {
    "check_in": "check_counts.npy",
    "crime": "crime_counts.npy",
    "service_call": "serviceCall_counts.npy",
}
PROVENANCE = {
    "description": "Chicago 77 community areas with POI, land-use and taxi OD aggregates (HAFusion data_Chi)",
    "sources": ["HAFusion (github MiRuacle24, data_Chi)", "libpysal example data (Chicago community areas)",
                "City of Chicago Data Portal (crime, 311 service calls, taxi trips)", "Foursquare check-ins"],
    "licences": {"HAFusion data": "published with the HAFusion code, no licence stated",
                 "libpysal examples": "BSD-3-Clause (libpysal); geometry from the City of Chicago Data Portal"},
    "crs_note": "Chicago77.shp has no .prj; EPSG:3435 (NAD83 / Illinois East, US feet) was assigned with set_crs",
    "region_order": "region_id = AREA_NUMBE (1..77); array row i <-> AREA_NUMBE i+1 (inferred, see data README)",
    "targets": {"check_in": "Foursquare check-in count", "crime": "crime count",
                "service_call": "311 service-call count"},
    "excluded": {f: "POI/land-use cosine similarity; the ETL computes similarities itself" for f in SKIPPED_FILES},
}


def read_regions(src: Path) -> gpd.GeoDataFrame:
    """The 77 community areas, ``region_id`` = area number, sorted so row i is area i + 1."""
    path = src / SHAPEFILE
    shp = read_vector(path)
    require_columns(shp, ["AREA_NUMBE", "COMMUNITY"], str(path))
    if shp.crs is not None and not shp.crs.equals(CRS):
        raise BundleError(f"{path}: expected no CRS (EPSG:3435 is assigned) but the file declares {shp.crs}")
    ids = pd.to_numeric(shp["AREA_NUMBE"], errors="coerce")
    if ids.isna().any() or sorted(ids.astype(int)) != list(range(1, N + 1)):
        raise BundleError(f"{path}: AREA_NUMBE must hold each of 1..{N} once; got {sorted(ids.dropna().tolist())}")
    regions = gpd.GeoDataFrame(
        {"region_id": ids.astype(np.int64).to_numpy(), "name": shp["COMMUNITY"].str.title().to_numpy()},
        geometry=shp.geometry.to_numpy(), crs=None,
    ).set_crs(CRS, allow_override=True)
    return regions.sort_values("region_id", ignore_index=True)


def convert(src: Path) -> CityBundle:
    """Build the Chicago-77 bundle from ``<data root>/chicago77``."""
    regions = read_regions(src)
    ids = regions["region_id"].tolist()
    aggregates = [
        Aggregate("poi_counts", "poi", "vector",
                  vector_table(ids, load_npy(src / "poi_dist.npy", (N, 26)), "poi_cat"),
                  "POI counts in 26 categories (HAFusion poi_dist)"),
        Aggregate("landuse_counts", "landuse", "vector",
                  vector_table(ids, load_npy(src / "landUse_dist.npy", (N, 12)), "landuse_cls"),
                  "land-use counts in 12 classes (HAFusion landUse_dist)"),
        Aggregate("od_trips", "mobility", "matrix",
                  matrix_table(ids, load_npy(src / "mob-adj.npy", (N, N))),
                  "taxi OD trip counts, rows = origins (HAFusion mob-adj, the target of its mobility loss)"),
        Aggregate("od_trips_hafusion", "mobility", "matrix",
                  matrix_table(ids, load_npy(src / "mob_dist.npy", (N, N))),
                  "a second taxi OD trip-count matrix from another undocumented extract, rows = origins "
                  "(HAFusion mob_dist, its mobility input feature; 0.99 correlated with od_trips)"),
    ]
    targets = targets_long(ids, {k: load_npy(src / f, (N,)) for k, f in TARGET_FILES.items()})
    return CityBundle(name=NAME, regions=regions, aggregates={a.name: a for a in aggregates},
                      targets=targets, provenance=PROVENANCE)
