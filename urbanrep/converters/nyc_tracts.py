"""NYC census tracts (2020): 2,325 tracts with 5-class land-use shares as the input modality.

Source folder layout (``<data root>/nyc_tracts``)::

    converted_nyc_tracts_2325.gpkg   BoroCT2020, population (density), land_use_0..4, EPSG:32118
    nyc_population.csv               BoroCT2020, pop            (all 2,325 tracts)
    crime_number-manhattan.csv       BoroCT2020, crime_number   (303 Manhattan tracts)
    nyc-landuse-area-11-classes.csv  BoroCT2020, 0..10          (11-class land-use area shares)

``region_id`` is ``BoroCT2020`` as an integer (borough digit + 6-digit tract code). The
only input modality is the land-use aggregate ``landuse_5class`` (``land_use_0..4``; tracts
whose five shares are all zero have no land-use data and get no row). The gpkg's
``population`` column is the population *target* and is never read as an input; the target
comes from ``nyc_population.csv`` (the same values). Targets:

* ``population`` - population density of the tract (persons per km², as published),
* ``crime`` - crime count, Manhattan tracts only,
* ``landuse_share_00`` .. ``landuse_share_10`` - 11-class land-use area shares, grouped as
  the multi-column target ``landuse_shares``; tracts absent from the CSV or with empty
  values are left out. The class names are not published with the CSV.

Every join is counted in the provenance (``joins``); source rows naming no tract are dropped.

**Leak warning.** RegionDCL built ``land_use_0..4`` by merging the 11 MapPLUTO land-use
classes ({01,02,03}->0, {04,05}->1, 06->2, {07,08,10}->3, {09,11}->4), the same parcels the
11-class target shares come from (a linear map from the 11 target shares explains 49-83 % of
the variance of each input share). The 5-class input is therefore a coarsened copy of the
``landuse_shares`` target: evaluate that target only with the land-use modality left out.
``provenance["target_leaks"]`` states this in machine-readable form.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd

from urbanrep.bundle import Aggregate, CityBundle
from urbanrep.converters._common import (
    long_targets,
    read_table,
    read_vector,
    require_columns,
    restrict_to_regions,
)
from urbanrep.errors import BundleError

log = logging.getLogger(__name__)

NAME = "nyc_tracts"
CRS = "EPSG:32118"
ID = "BoroCT2020"
GPKG = "converted_nyc_tracts_2325.gpkg"
LANDUSE_INPUT = [f"land_use_{i}" for i in range(5)]
N_LANDUSE_TARGET = 11
LANDUSE_TARGETS = [f"landuse_share_{i:02d}" for i in range(N_LANDUSE_TARGET)]
PROVENANCE_BASE: dict[str, Any] = {
    "description": "New York City 2020 census tracts (RegionDCL release) with land-use shares as input",
    "sources": ["RegionDCL (github LightChaser666/RegionDCL): tracts and land_use_0..4",
                "region-embedding-benchmark (github gegen07): population, crime and 11-class land-use CSVs",
                "NYC Department of City Planning (tract geometry, MapPLUTO land use)", "US Census 2020",
                "NYPD complaint data (NYC Open Data)"],
    "licences": {"NYC Open Data / DCP": "public domain (NYC Open Data terms of use)",
                 "benchmark CSVs": "published with the benchmark code, no licence stated"},
    "targets": {"population": "population density (persons per km², as published)",
                "crime": "crime count (Manhattan tracts only)",
                "landuse_share_00..10": "11-class land-use area shares (class names not published)"},
    "excluded": {f"{GPKG}:population": "population target, never used as an input"},
    "target_leaks": {"landuse_shares": {
        "modalities": ["landuse"], "aggregates": ["landuse_5class"],
        "why": "land_use_0..4 merge the same 11 MapPLUTO classes the target shares measure "
               "(RegionDCL merge: {01,02,03}->0, {04,05}->1, 06->2, {07,08,10}->3, {09,11}->4)"}},
}


def read_regions(src: Path) -> gpd.GeoDataFrame:
    """Tract polygons plus the five land-use share columns (``region_id`` = BoroCT2020 as int)."""
    path = src / GPKG
    gdf = read_vector(path)
    require_columns(gdf, [ID, *LANDUSE_INPUT], str(path))
    ids = pd.to_numeric(gdf[ID], errors="coerce")
    if ids.isna().any():
        raise BundleError(f"{path}: non-numeric {ID} at rows {list(gdf.index[ids.isna()][:10])}")
    out = gpd.GeoDataFrame({"region_id": ids.astype(np.int64).to_numpy()},
                           geometry=gdf.geometry.to_numpy(), crs=gdf.crs)
    for c in LANDUSE_INPUT:
        out[c] = gdf[c].to_numpy(dtype=np.float64)
    return out


def _csv(src: Path, name: str, columns: list[str]) -> pd.DataFrame:
    df = read_table(src / name, [ID, *columns])
    df[ID] = pd.to_numeric(df[ID], errors="coerce")
    if df[ID].isna().any():
        raise BundleError(f"{src / name}: non-numeric {ID} in {int(df[ID].isna().sum())} rows")
    df[ID] = df[ID].astype(np.int64)
    return df


def convert(src: Path) -> CityBundle:
    """Build the NYC census-tract bundle from ``<data root>/nyc_tracts``."""
    tracts = read_regions(src)
    if tracts.crs is None or not tracts.crs.equals(CRS):
        log.warning("%s: expected %s, found %s (kept as found)", src / GPKG, CRS, tracts.crs)
    ids = tracts["region_id"].tolist()
    regions = tracts[["region_id", "geometry"]]

    shares = tracts[LANDUSE_INPUT].to_numpy()
    has_lu = shares.sum(axis=1) > 0
    lu_table = pd.DataFrame(shares[has_lu], columns=LANDUSE_INPUT)
    lu_table.insert(0, "region_id", tracts["region_id"].to_numpy()[has_lu])
    aggregates = {"landuse_5class": Aggregate(
        "landuse_5class", "landuse", "vector", lu_table,
        "5-class land-use area shares per tract (RegionDCL land_use_0..4 = merged MapPLUTO classes; "
        "tracts without land use have no row). Leaks the landuse_shares target: see provenance target_leaks")}

    joins: dict[str, dict[str, int]] = {}
    left_out: dict[str, int] = {}
    pop, joins["nyc_population.csv"] = restrict_to_regions(
        _csv(src, "nyc_population.csv", ["pop"]), ID, ids, "nyc_population.csv")
    crime, joins["crime_number-manhattan.csv"] = restrict_to_regions(
        _csv(src, "crime_number-manhattan.csv", ["crime_number"]), ID, ids, "crime_number-manhattan.csv")
    lu_cols = [str(i) for i in range(N_LANDUSE_TARGET)]
    lu11, joins["nyc-landuse-area-11-classes.csv"] = restrict_to_regions(
        _csv(src, "nyc-landuse-area-11-classes.csv", lu_cols), ID, ids, "nyc-landuse-area-11-classes.csv")
    # A tract with any class missing has no usable share vector: leave the whole vector out.
    lu11_ok = lu11[lu_cols].notna().all(axis=1)
    left_out["landuse_shares_incomplete_rows"] = int((~lu11_ok).sum())
    frames = []
    for name, df, cols in (("population", pop, {"population": "pop"}),
                           ("crime", crime, {"crime": "crime_number"}),
                           ("landuse", lu11.loc[lu11_ok], dict(zip(LANDUSE_TARGETS, lu_cols, strict=True)))):
        t, lo = long_targets(df, ID, cols)
        frames.append(t)
        left_out.update({k: v for k, v in lo.items() if v})
        log.info("nyc_tracts %s targets: %d rows", name, len(t))
    targets = pd.concat(frames, ignore_index=True)
    counts = targets.groupby("target", sort=False).size()
    provenance = {
        **PROVENANCE_BASE,
        "joins": joins,
        "landuse_input_regions_without_data": int((~has_lu).sum()),
        "targets_left_out": left_out,
        "target_counts": {"population": int(counts.get("population", 0)), "crime": int(counts.get("crime", 0)),
                          "landuse_shares": int(counts.get(LANDUSE_TARGETS[0], 0))},
    }
    return CityBundle(name=NAME, regions=regions, aggregates=aggregates, targets=targets,
                      target_groups={"landuse_shares": list(LANDUSE_TARGETS)}, provenance=provenance)
