"""NYC Manhattan-180: polygons, OD matrices, trip samples, POI/land-use counts, image features.

Sources: MGFN (wushangbin), HAFusion (MiRuacle24), HREP (slzhou-xy, MIT), GURPP (luck-seu, MIT),
MTGC (eugenia-cell); underlying data from NYC Open Data, NYC TLC and Foursquare.
``features/hrep_checkin_similarity.npy`` is derived from the check-in target and is never read.
"""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd

from urbanrep.bundle import Aggregate, CityBundle
from urbanrep.converters._common import load_npy, matrix_table, targets_long, vector_table
from urbanrep.errors import BundleError

NAME = "nyc_manhattan180"
N = 180
#: Files never read: they leak a target.
LEAKY_FILES = ("features/hrep_checkin_similarity.npy",)
TARGET_FILES = {
    "crime": "crime_counts_label.npy",
    "check_in": "check_in_label.npy",
    "service_call": "serviceCall_counts.npy",
    "carbon": "carbon_counts.npy",
    "income": "income_counts.npy",
}
PROVENANCE = {
    "description": "Manhattan 180-region benchmark (MVURE/MGFN/HREP/HAFusion/GURPP region order 0..179)",
    "sources": ["MGFN (github wushangbin)", "HAFusion (github MiRuacle24)", "HREP (github slzhou-xy, MIT)",
                "GURPP (github luck-seu, MIT)", "MTGC (github eugenia-cell)",
                "NYC Open Data", "NYC TLC trip records", "Foursquare check-ins"],
    "excluded": list(LEAKY_FILES),
    # What each target is, as the benchmark's publications describe it (shown in the HTML report).
    "targets": {
        "crime": {"definition": "crime records in the region (NYC Open Data; MVURE/MGFN label crime_counts_label)",
                  "unit": "crimes (count)", "kind": "count"},
        "check_in": {"definition": "Foursquare check-ins in the region (MVURE/MGFN label check_in_label)",
                     "unit": "check-ins (count)", "kind": "count"},
        "service_call": {"definition": "311 service requests from the region (NYC Open Data; HAFusion label "
                                       "serviceCall_counts)", "unit": "calls (count)", "kind": "count"},
        "carbon": {"definition": "carbon emission of the region as published by GURPP (carbon_counts); the "
                                 "source does not state the unit or year", "unit": "as published (unstated)",
                   "kind": "amount"},
        "income": {"definition": "income of the region's residents as published by GURPP (income_counts); 0 "
                                 "where the source has no value", "unit": "US dollars", "kind": "amount"},
    },
}


def read_regions(src: Path) -> gpd.GeoDataFrame:
    """The 180 polygons, checked to be in array order (row i has region_id i)."""
    path = src / "regions" / "mh-180.shp"
    try:
        regions = gpd.read_file(path)
    except Exception as exc:
        raise BundleError(f"cannot read {path}: {exc}") from exc
    if list(regions["region_id"]) != list(range(N)):
        raise BundleError(f"{path}: expected region_id 0..{N - 1} in row order")
    return regions[["region_id", "geometry"]]


def read_trips(src: Path) -> gpd.GeoDataFrame:
    """The 800 raw 2015 TLC trips with pickup/dropoff coordinates (WGS84)."""
    frames = []
    for path in sorted((src / "raw_taxi_samples" / "data_ready").glob("all_tripdata_*.csv")):
        frames.append(pd.read_csv(path, index_col=0))
    if not frames:
        raise BundleError(f"no raw trip files in {src / 'raw_taxi_samples' / 'data_ready'}")
    df = pd.concat(frames, ignore_index=True)
    trips = gpd.GeoDataFrame(
        {"time": pd.to_datetime(df["tpep_pickup_datetime"]), "count": np.ones(len(df), dtype=np.int64)},
        geometry=gpd.points_from_xy(df["pickup_longitude"], df["pickup_latitude"]), crs="EPSG:4326",
    ).rename_geometry("origin")
    trips["destination"] = gpd.GeoSeries(gpd.points_from_xy(df["dropoff_longitude"], df["dropoff_latitude"]),
                                         crs="EPSG:4326")
    return trips


def convert(src: Path) -> CityBundle:
    """Build the NYC-180 bundle from ``<data root>/nyc_manhattan180``."""
    regions = read_regions(src)
    ids = regions["region_id"].tolist()
    feat = src / "features"
    flow_in = load_npy(feat / "gurpp_flow_in_per_hour.npy", (N, 24))
    flow_out = load_npy(feat / "gurpp_flow_out_per_hour.npy", (N, 24))
    aggregates = [
        Aggregate("poi_counts", "poi", "vector",
                  vector_table(ids, load_npy(feat / "hafusion_poi_dist.npy", (N, 26)), "poi_cat"),
                  "POI counts in 26 categories (HAFusion)"),
        Aggregate("landuse_counts", "landuse", "vector",
                  vector_table(ids, load_npy(feat / "hafusion_landUse_dist.npy", (N, 11)), "landuse_cls"),
                  "land-use parcel counts in 11 classes (HAFusion)"),
        Aggregate("od_trips", "mobility", "matrix",
                  matrix_table(ids, load_npy(feat / "mob_label.npy", (N, N))),
                  "taxi OD trip counts (MGFN/HREP mob_label)"),
        Aggregate("od_trips_by_slice", "mobility", "matrix",
                  matrix_table(ids, load_npy(feat / "mob_patterns.npy", (7, N, N))),
                  "taxi OD trip counts in 7 time slices (MGFN mob_patterns)"),
        Aggregate("od_trips_hafusion", "mobility", "matrix",
                  matrix_table(ids, load_npy(feat / "hafusion_mob_dist.npy", (N, N))),
                  "a second taxi OD count matrix (HAFusion mob_dist)"),
        Aggregate("flow_per_hour", "mobility", "vector",
                  vector_table(ids, np.hstack([flow_in, flow_out]), "flow",
                               [f"in_h{h:02d}" for h in range(24)] + [f"out_h{h:02d}" for h in range(24)]),
                  "hourly taxi in/out flow (GURPP)"),
        Aggregate("image_features", "remote_sensing", "vector",
                  vector_table(ids, load_npy(feat / "gurpp_region_si_img.npy", (N, 512)).astype(np.float32), "img"),
                  "512-d image features per region (GURPP; source imagery not published)"),
    ]
    tdir = src / "targets"
    targets = targets_long(ids, {k: load_npy(tdir / f) for k, f in TARGET_FILES.items()})
    cd_path = src / "regions" / "mh_cd.json"
    cd = json.loads(cd_path.read_text())
    labels = pd.DataFrame({"region_id": [int(k) for k in cd], "label": "community_district",
                           "value": [str(v) for v in cd.values()]})
    return CityBundle(
        name=NAME, regions=regions, trips=read_trips(src),
        aggregates={a.name: a for a in aggregates}, targets=targets, labels=labels,
        provenance=PROVENANCE,
    )
