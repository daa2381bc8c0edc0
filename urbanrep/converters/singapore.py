"""Singapore: 374 planning-subzone polygons with raw OSM POIs as the only input modality.

Source folder layout (``<data root>/singapore``), both EPSG:3414, from the RegionDCL release::

    converted_singapore_subzones_374.gpkg   name, population, land_use_0..4
    converted_singapore_poi_4347.gpkg       code, fclass (Geofabrik-style OSM POI classes)

Subzone names are not unique (islands such as Sudong or the Southern Group are split into
several polygons, 53 rows share 15 names), so ``region_id`` is the row index 0..373 of the gpkg
and the name is kept as the ``name`` column of the regions.

POIs become the raw ``pois`` layer with ``category`` = the class of the shipped vocabulary
``urbanrep-osm`` that the Geofabrik ``fclass`` maps to (:mod:`urbanrep.vocabulary`; ``fclass``
and ``code`` are kept as columns), and the bundle fixes its POI columns to that vocabulary's
classes, so that Singapore, Helsinki and any city prepared with ``urbanrep prepare osm`` share
feature columns (a model trained on one embeds the others). Classes the vocabulary does not map
(towers, lighthouses: ``man_made`` objects, 39 points) are left out and counted per ``fclass``
in the provenance.

Targets:

* ``population`` - subzone population as published by RegionDCL (WorldPop 2020, UN-adjusted,
  summed per subzone). Missing values (NaN, 10 subzones) are left out. Zeros (45 subzones:
  offshore islands, Jurong Island, the Tuas industrial sectors, ...) are kept: they are
  observed values of subzones without residents, not gaps.
* ``landuse_share_0..4`` - 5-class land-use area shares from the URA Master Plan, merged by
  RegionDCL into residential, commercial, industrial ("business"), institutional/transport/
  park, open space/other (in that order); grouped as ``landuse_shares``. Subzones whose five
  shares are all zero have no land-use data and are left out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd

from urbanrep.bundle import CityBundle
from urbanrep.converters._common import long_targets, read_vector, require_columns
from urbanrep.vocabulary import load_vocabulary

NAME = "singapore"
VOCABULARY = "urbanrep-osm/1"
SUBZONES = "converted_singapore_subzones_374.gpkg"
POIS = "converted_singapore_poi_4347.gpkg"
LANDUSE_COLS = [f"land_use_{i}" for i in range(5)]
LANDUSE_TARGETS = [f"landuse_share_{i}" for i in range(5)]
LANDUSE_CLASSES = ["residential", "commercial", "industrial", "institution/transport/park", "open space/other"]
PROVENANCE_BASE: dict[str, Any] = {
    "description": "Singapore planning subzones (RegionDCL release) with raw OSM POIs as input",
    "sources": ["RegionDCL (github LightChaser666/RegionDCL)", "URA Master Plan subzones and land use "
                "(data.gov.sg)", "WorldPop 2020 UN-adjusted population", "OpenStreetMap via Geofabrik (POIs)"],
    "licences": {"OpenStreetMap": "ODbL 1.0, (c) OpenStreetMap contributors",
                 "URA / data.gov.sg": "Singapore Open Data Licence 1.0", "WorldPop": "CC BY 4.0"},
    "region_id": "row index 0..373 of the subzone gpkg (subzone names are not unique); names in regions.name",
    "targets": {"population": "WorldPop 2020 (UN-adjusted) population per subzone, as published by RegionDCL",
                "landuse_share_0..4": "area shares of " + ", ".join(LANDUSE_CLASSES)},
}


def read_regions(src: Path) -> gpd.GeoDataFrame:
    """Subzone polygons with ``region_id`` = row index, ``name``, and the target columns."""
    path = src / SUBZONES
    gdf = read_vector(path)
    require_columns(gdf, ["name", "population", *LANDUSE_COLS], str(path))
    out = gpd.GeoDataFrame({"region_id": np.arange(len(gdf), dtype=np.int64), "name": gdf["name"].to_numpy()},
                           geometry=gdf.geometry.to_numpy(), crs=gdf.crs)
    for c in ["population", *LANDUSE_COLS]:
        out[c] = pd.to_numeric(gdf[c], errors="coerce").to_numpy(dtype=np.float64)
    return out


def read_pois(src: Path) -> tuple[gpd.GeoDataFrame, dict[str, int]]:
    """The POI points with ``category`` = vocabulary class of the Geofabrik ``fclass``.

    Returns:
        ``(pois, unmapped)``: the mapped points and, per ``fclass``, the points left out.
    """
    path = src / POIS
    gdf = read_vector(path)
    require_columns(gdf, ["fclass"], str(path))
    fclass = gdf["fclass"].astype(str).to_numpy()
    classes, unmapped = load_vocabulary(VOCABULARY).layer("pois").map_fclass(fclass)
    keep = np.array([c is not None for c in classes], dtype=bool)
    cols: dict[str, Any] = {"category": np.asarray(classes, dtype=object)[keep], "fclass": fclass[keep]}
    if "code" in gdf.columns:
        cols["code"] = gdf["code"].to_numpy()[keep]
    return gpd.GeoDataFrame(cols, geometry=gdf.geometry.to_numpy()[keep], crs=gdf.crs), dict(unmapped.most_common())


def convert(src: Path) -> CityBundle:
    """Build the Singapore bundle from ``<data root>/singapore``."""
    subzones = read_regions(src)
    regions = subzones[["region_id", "name", "geometry"]]
    pop, pop_left_out = long_targets(subzones, "region_id", {"population": "population"})
    shares = subzones[LANDUSE_COLS].to_numpy()
    has_lu = np.isfinite(shares).all(axis=1) & (np.nan_to_num(shares).sum(axis=1) > 0)
    lu, _ = long_targets(subzones.loc[has_lu], "region_id", dict(zip(LANDUSE_TARGETS, LANDUSE_COLS, strict=True)))
    provenance = {
        **PROVENANCE_BASE,
        "duplicate_subzone_names": int(subzones["name"].duplicated(keep=False).sum()),
        "targets_left_out": {"population_missing": pop_left_out["population"],
                             "landuse_shares_without_data": int((~has_lu).sum())},
        "population_zeros_kept": int((subzones["population"] == 0).sum()),
        "target_counts": {"population": len(pop), "landuse_shares": int(has_lu.sum())},
    }
    pois, unmapped = read_pois(src)
    provenance["vocabulary"] = VOCABULARY
    provenance["pois_unmapped_by_fclass"] = unmapped
    return CityBundle(name=NAME, regions=regions, pois=pois,
                      categories=load_vocabulary(VOCABULARY).categories(["pois"]),
                      targets=pd.concat([pop, lu], ignore_index=True),
                      target_groups={"landuse_shares": list(LANDUSE_TARGETS)}, provenance=provenance)
