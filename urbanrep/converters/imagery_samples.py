"""Imagery samples: 24 Baidu satellite tiles (zoom 16) from four Chinese cities with indicators.

Source folder layout (``<data root>/imagery_samples``)::

    tiles.csv           city, WGS84 coordinate "(lat, lon)", carbon_emissions (ton),
                        population (unit), gdp (million yuan), file
    <City>/16_<x>_<y>_s.jpg   256 x 256 satellite tiles (UrbanCLIP dataset toolkit)

One region per tile: ``region_id`` = ``"<City>/<file stem without _s>"`` (``"Beijing/16_12614_4690"``),
the geometry is the tile footprint and the ``remote_sensing`` layer holds the same footprint
with ``image_path`` = the **absolute** resolved path of the jpg in the data root. A bundle
written from this converter therefore points into the data root and is not relocatable
(the bundle writer keeps paths as given); copy the images next to the bundle and make the
paths relative if you need to move it.

Footprints. The names are Baidu map tile numbers (BD09 Mercator, y grows northwards), not
OSM slippy-map tiles: at zoom z a tile spans ``256 * 2**(18 - z)`` Baidu-Mercator units
(1024 at zoom 16, about 790 m on the ground in Beijing). The UrbanCLIP toolkit computed the
``WGS84 coordinate`` by converting the tile origin ``(x, y) * 256 * 2**(18 - z)`` with Baidu's
API, so it is the tile's **south-west corner**, not its centre. The footprint is the box from
that corner spanning the tile size east and north, with Baidu-Mercator units taken as Web
Mercator (EPSG:3857) metres; adjacent tiles in ``tiles.csv`` are 1028-1030 EPSG:3857 m apart
vertically, so the footprints are about 0.5 % (4-6 m) too short, which is far below the
resolution of the indicators.

Targets: ``carbon`` (ODIAC t CO2), ``population`` (WorldPop count) and ``gdp`` (million yuan).
GDP 10000.0 is a cap/fill value of the source raster: those rows are left out of ``gdp`` and
counted in the provenance. Label ``city`` (4 classes) is given for clustering.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyproj
import shapely

from urbanrep.bundle import CityBundle
from urbanrep.converters._common import long_targets, read_table
from urbanrep.errors import BundleError

NAME = "imagery_samples"
CSV = "tiles.csv"
COORD = "WGS84 coordinate"
TARGET_COLUMNS = {"carbon": "carbon_emissions (ton)", "population": "population (unit)", "gdp": "gdp (million yuan)"}
GDP_FILL = 10000.0
PROVENANCE_BASE: dict[str, Any] = {
    "description": "24 Baidu satellite tiles (zoom 16) of Beijing, Guangzhou, Shanghai and Shenzhen with indicators",
    "sources": ["UrbanCLIP dataset toolkit (github siruzhong/UrbanCLIP-Dataset-Toolkit)", "Baidu Maps satellite tiles",
                "ODIAC carbon emissions (1 km)", "WorldPop 2020 population", "China GDP grid (1 km)"],
    "licences": {"satellite tiles": "Baidu Maps imagery as distributed with the UrbanCLIP toolkit (no licence stated)",
                 "ODIAC": "free for research use with citation (NIES)", "WorldPop": "CC BY 4.0",
                 "GDP grid": "not stated by the toolkit"},
    "footprints": "box from the CSV's WGS84 coordinate (the Baidu tile's south-west corner) spanning "
                  "256 * 2**(18 - zoom) Baidu-Mercator units, taken as EPSG:3857 metres (about 0.5 % short)",
    "image_paths": "absolute paths into the data root: the bundle is not relocatable",
    "targets": {"carbon": "carbon emissions (t, ODIAC)", "population": "population (WorldPop)",
                "gdp": f"GDP (million yuan); {GDP_FILL} is a cap/fill value and is left out"},
}


def _parse_latlon(values: pd.Series, path: Path) -> tuple[np.ndarray, np.ndarray]:
    parts = values.astype(str).str.strip().str.strip("()").str.split(",", expand=True)
    if parts.shape[1] != 2:
        raise BundleError(f"{path}: column {COORD!r} must hold '(lat, lon)' strings")
    lat = pd.to_numeric(parts[0], errors="coerce").to_numpy(dtype=np.float64)
    lon = pd.to_numeric(parts[1], errors="coerce").to_numpy(dtype=np.float64)
    bad = np.isnan(lat) | np.isnan(lon) | (np.abs(lat) > 90) | (np.abs(lon) > 180)
    if bad.any():
        raise BundleError(f"{path}: unreadable {COORD!r} at rows {list(np.flatnonzero(bad)[:10])}")
    return lat, lon


def tile_footprints(lat: np.ndarray, lon: np.ndarray, zoom: np.ndarray) -> np.ndarray:
    """Footprints of Baidu tiles from their WGS84 south-west corners.

    Args:
        lat: ``[T]`` latitude of each tile's south-west corner.
        lon: ``[T]`` longitude of each tile's south-west corner.
        zoom: ``[T]`` Baidu zoom level of each tile.

    Returns:
        ``[T]`` shapely Polygons in EPSG:4326 (lon/lat boxes).
    """
    to_merc = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True)
    x0, y0 = to_merc.transform(lon, lat)
    side = 256.0 * 2.0 ** (18 - zoom.astype(np.float64))
    lon1, lat1 = to_merc.transform(np.asarray(x0) + side, np.asarray(y0) + side, direction="INVERSE")
    return shapely.box(lon, lat, lon1, lat1)


def convert(src: Path) -> CityBundle:
    """Build the imagery-samples bundle from ``<data root>/imagery_samples``."""
    path = src / CSV
    df = read_table(path, ["city", COORD, "file", *TARGET_COLUMNS.values()])
    parts = df["file"].astype(str).str.extract(r"^(?P<folder>[^/]+)/(?P<z>\d+)_(?P<x>\d+)_(?P<y>\d+)(?:_s)?\.jpg$")
    if parts.isna().any(axis=1).any():
        bad = df.loc[parts.isna().any(axis=1), "file"].iloc[0]
        raise BundleError(f"{path}: file {bad!r} is not '<City>/<zoom>_<x>_<y>_s.jpg'")
    images = np.array([(src / f).resolve() for f in df["file"]], dtype=object)
    missing = [str(p) for p in images if not p.exists()]
    if missing:
        raise BundleError(f"{path}: {len(missing)} listed images are missing, e.g. {missing[0]}")
    lat, lon = _parse_latlon(df[COORD], path)
    footprints = tile_footprints(lat, lon, parts["z"].astype(np.int64).to_numpy())
    region_ids = (parts["folder"] + "/" + parts["z"] + "_" + parts["x"] + "_" + parts["y"]).to_numpy()
    df["region_id"] = region_ids
    regions = gpd.GeoDataFrame({"region_id": region_ids}, geometry=footprints, crs="EPSG:4326")
    remote_sensing = gpd.GeoDataFrame({"region_id": region_ids, "image_path": [str(p) for p in images]},
                                      geometry=footprints, crs="EPSG:4326")
    gdp_fill = pd.to_numeric(df[TARGET_COLUMNS["gdp"]], errors="coerce") == GDP_FILL
    df.loc[gdp_fill, TARGET_COLUMNS["gdp"]] = np.nan
    targets, left_out = long_targets(df, "region_id", TARGET_COLUMNS)
    labels = pd.DataFrame({"region_id": region_ids, "label": "city", "value": df["city"].astype(str).to_numpy()})
    provenance = {
        **PROVENANCE_BASE,
        "gdp_fill_values_left_out": int(gdp_fill.sum()),
        "targets_left_out": left_out,
        "tiles": len(df),
    }
    return CityBundle(name=NAME, regions=regions, remote_sensing=remote_sensing, targets=targets, labels=labels,
                      provenance=provenance)
