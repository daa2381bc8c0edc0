"""The six data-root converters: convert -> write_bundle -> read_bundle on the real data.

Each converter test skips with a reason when its folder is missing from the data root
(``$URBANREP_DATA``, default ``../shared/data``). The GTFS and OSM helpers are also checked on
small generated inputs in the real file formats.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import shapely

from urbanrep.bundle import CityBundle, read_bundle, write_bundle
from urbanrep.converters import get_converter
from urbanrep.converters._common import long_targets, restrict_to_regions
from urbanrep.converters.sao_paulo import REFERENCE_DATE, read_transit_trips
from urbanrep.datasets import resolve_data_root
from urbanrep.errors import BundleError

DATA = resolve_data_root()


def _source(name: str) -> Path:
    src = DATA / name
    if not src.is_dir():
        pytest.skip(f"data root {DATA} has no {name}/ (set URBANREP_DATA to the shared data folder)")
    return src


def _roundtrip(name: str, tmp_path_factory: pytest.TempPathFactory) -> CityBundle:
    bundle = get_converter(name)(_source(name))
    out = tmp_path_factory.mktemp(name) / "bundle"
    write_bundle(bundle, out)
    return read_bundle(out)


@pytest.fixture(scope="module")
def chicago(tmp_path_factory: pytest.TempPathFactory) -> CityBundle:
    return _roundtrip("chicago77", tmp_path_factory)


@pytest.fixture(scope="module")
def nyc_tracts(tmp_path_factory: pytest.TempPathFactory) -> CityBundle:
    return _roundtrip("nyc_tracts", tmp_path_factory)


@pytest.fixture(scope="module")
def singapore(tmp_path_factory: pytest.TempPathFactory) -> CityBundle:
    return _roundtrip("singapore", tmp_path_factory)


@pytest.fixture(scope="module")
def helsinki(tmp_path_factory: pytest.TempPathFactory) -> CityBundle:
    return _roundtrip("helsinki_osm", tmp_path_factory)


@pytest.fixture(scope="module")
def sao_paulo(tmp_path_factory: pytest.TempPathFactory) -> CityBundle:
    return _roundtrip("sao_paulo", tmp_path_factory)


@pytest.fixture(scope="module")
def imagery(tmp_path_factory: pytest.TempPathFactory) -> CityBundle:
    return _roundtrip("imagery_samples", tmp_path_factory)


# --------------------------------------------------------------------------- chicago77

def test_chicago_regions_follow_array_rows(chicago: CityBundle) -> None:
    assert len(chicago.regions) == 77
    assert chicago.crs.to_epsg() == 3435
    assert chicago.regions["region_id"].tolist() == list(range(1, 78))
    assert chicago.regions.loc[24, "name"] == "Austin"
    assert "EPSG:3435" in chicago.provenance["crs_note"]


def test_chicago_known_target_values(chicago: CityBundle) -> None:
    t = chicago.target_table()
    assert list(t.columns) == ["check_in", "crime", "service_call"]
    assert t["crime"].idxmax() == 25  # row 24 = Austin
    assert set(t["check_in"].nlargest(2).index) == {8, 32}  # Near North Side, Loop
    raw = np.load(_source("chicago77") / "crime_counts.npy")
    np.testing.assert_array_equal(t["crime"].to_numpy(), raw)


def test_chicago_aggregates(chicago: CityBundle) -> None:
    src = _source("chicago77")
    assert chicago.modalities == ["poi", "mobility", "landuse"]
    assert set(chicago.aggregates) == {"poi_counts", "landuse_counts", "od_trips", "od_trips_hafusion"}
    poi, mask = chicago.aggregates["poi_counts"].dense(chicago.region_ids)
    assert poi.shape == (77, 26) and mask.all()
    np.testing.assert_array_equal(poi, np.load(src / "poi_dist.npy"))
    lu, _ = chicago.aggregates["landuse_counts"].dense(chicago.region_ids)
    assert lu.shape == (77, 12)
    od, _ = chicago.aggregates["od_trips"].dense(chicago.region_ids)
    np.testing.assert_array_equal(od[0], np.load(src / "mob-adj.npy"))
    od2, _ = chicago.aggregates["od_trips_hafusion"].dense(chicago.region_ids)
    np.testing.assert_array_equal(od2[0], np.load(src / "mob_dist.npy"))


# --------------------------------------------------------------------------- nyc_tracts

def test_nyc_tracts_regions_and_input(nyc_tracts: CityBundle) -> None:
    assert len(nyc_tracts.regions) == 2325
    assert nyc_tracts.crs.to_epsg() == 32118
    assert nyc_tracts.modalities == ["landuse"]
    agg = nyc_tracts.aggregates["landuse_5class"]
    assert agg.value_columns() == [f"land_use_{i}" for i in range(5)]
    assert "population" not in agg.table.columns
    _, mask = agg.dense(nyc_tracts.region_ids)
    assert mask.sum() == 2325 - nyc_tracts.provenance["landuse_input_regions_without_data"]
    assert np.allclose(agg.table[agg.value_columns()].sum(axis=1), 1.0, atol=1e-6)
    assert nyc_tracts.provenance["target_leaks"]["landuse_shares"]["aggregates"] == ["landuse_5class"]


def test_nyc_tracts_targets(nyc_tracts: CityBundle) -> None:
    t = nyc_tracts.target_table()
    counts = t.count()
    assert counts["population"] == 2325
    assert counts["crime"] == 303
    assert (t["crime"].dropna().index // 1_000_000 == 1).all()  # Manhattan is borough 1
    assert t.loc[1000201, "population"] == pytest.approx(31569.892483)
    assert t.loc[1000201, "crime"] == 81
    group = nyc_tracts.target_groups["landuse_shares"]
    assert group == [f"landuse_share_{i:02d}" for i in range(11)]
    shares = t[group].dropna()
    assert len(shares) == 2318 == counts[group[0]]
    assert np.allclose(shares.sum(axis=1), 1.0, atol=1e-6)
    joins = nyc_tracts.provenance["joins"]
    assert joins["nyc-landuse-area-11-classes.csv"]["regions_without_row"] == 3
    assert nyc_tracts.provenance["targets_left_out"]["landuse_shares_incomplete_rows"] == 4


# --------------------------------------------------------------------------- singapore

def test_singapore(singapore: CityBundle) -> None:
    assert len(singapore.regions) == 374
    assert singapore.crs.to_epsg() == 3414
    assert singapore.regions["region_id"].tolist() == list(range(374))
    assert singapore.regions["name"].duplicated().any()  # why region_id is an index
    assert singapore.modalities == ["poi"]
    # 4,347 points, 103 Geofabrik classes -> vocabulary classes; 39 man_made towers are unmapped.
    assert len(singapore.pois) == 4347 - 39
    assert singapore.pois["fclass"].nunique() == 103 - 5
    assert singapore.provenance["pois_unmapped_by_fclass"] == {"comms_tower": 19, "tower": 13,
                                                                "observation_tower": 4, "water_tower": 2, "lighthouse": 1}
    assert set(singapore.pois["category"]) <= set(singapore.categories["pois"])
    assert (singapore.pois.loc[singapore.pois["fclass"] == "playground", "category"] == "playground").all()
    t = singapore.target_table()
    assert t["population"].count() == 364
    assert (t["population"] == 0).sum() == singapore.provenance["population_zeros_kept"] == 45
    assert t.loc[0, "population"] == pytest.approx(2047.233119)  # MARINA EAST
    group = singapore.target_groups["landuse_shares"]
    assert len(group) == 5 and t[group[0]].count() == 372
    assert np.allclose(t[group].dropna().sum(axis=1), 1.0, atol=1e-6)


# --------------------------------------------------------------------------- helsinki_osm

def test_helsinki_regions_cover_extract(helsinki: CityBundle) -> None:
    assert len(helsinki.regions) == 22
    assert helsinki.crs.to_epsg() == 4326
    box = shapely.box(*helsinki.provenance["extract_bbox_lonlat"])
    assert helsinki.regions.intersects(box).all()
    t = helsinki.target_table()
    assert t["population"].count() == 22 and (t["population"] > 0).all()


def test_helsinki_osm_layers(helsinki: CityBundle) -> None:
    assert helsinki.modalities == ["poi", "landuse", "road"]
    box = shapely.box(*helsinki.provenance["extract_bbox_lonlat"]).buffer(1e-4)
    pois, roads, lu = helsinki.pois, helsinki.roads, helsinki.landuse
    assert (pois.geom_type == "Point").all() and pois.within(box).all()
    assert pois["osm_tag"].str.fullmatch(r"[a-z_]+=.+").all()
    assert set(pois["category"]) <= set(helsinki.categories["pois"])
    assert (pois["category"] == "restaurant").sum() > 100
    assert (roads.geom_type == "LineString").all() and roads.within(box).all()
    assert {"primary", "pedestrian", "residential"} <= set(roads["class"])
    assert set(lu["osm_key"]) == {"landuse", "building"}
    assert lu.loc[lu["osm_key"] == "building", "class"].str.startswith("building_").all()
    assert set(lu["class"]) <= set(helsinki.categories["landuse"])
    assert (lu["osm_key"] == "building").sum() == helsinki.provenance["osm_counts"]["buildings_areas"]


# --------------------------------------------------------------------------- sao_paulo

def test_sao_paulo_regions_and_targets(sao_paulo: CityBundle) -> None:
    assert len(sao_paulo.regions) == 323
    assert sao_paulo.crs.to_epsg() == 32723
    assert sao_paulo.regions["region_id"].str.fullmatch(r"[0-9a-f]{15}").all()  # H3 index
    t = sao_paulo.target_table()
    csv = pd.read_csv(_source("sao_paulo") / "spo_hexgrid.csv", dtype={"id": str}).set_index("id")
    for name in ("population", "jobs", "schools"):
        np.testing.assert_array_equal(t[name].to_numpy(), csv.loc[t.index, name].to_numpy())
    assert sao_paulo.modalities == ["mobility", "road"]
    assert sao_paulo.pois is None
    assert len(sao_paulo.roads) == 6000


def test_sao_paulo_transit_trips(sao_paulo: CityBundle) -> None:
    trips = sao_paulo.trips
    assert (trips["count"] >= 1).all()
    days = trips["time"].dt.normalize().unique()
    assert set(days) <= {REFERENCE_DATE, REFERENCE_DATE + pd.Timedelta(days=1)}
    # CPTM L07-0: 04:00-04:59 every 720 s -> 5 runs leaving the first stop at 04:00.
    first = trips[(trips["trip_id"] == "CPTM L07-0") & (trips["time"] == REFERENCE_DATE + pd.Timedelta(hours=4))]
    assert first["count"].tolist() == [5]
    assert sao_paulo.provenance["gtfs_counts"]["stop_pairs"] == 824


# --------------------------------------------------------------------------- imagery_samples

def test_imagery_samples(imagery: CityBundle) -> None:
    assert len(imagery.regions) == 24
    assert imagery.crs.to_epsg() == 4326
    assert imagery.modalities == ["remote_sensing"]
    rs = imagery.remote_sensing
    assert all(Path(p).is_absolute() and Path(p).exists() for p in rs["image_path"])
    g = imagery.regions.set_index("region_id").geometry
    # South-west corner = the CSV's WGS84 coordinate of Beijing/16_12614_4690_s.jpg.
    minx, miny, _, _ = g["Beijing/16_12614_4690"].bounds
    assert (miny, minx) == pytest.approx((39.753186724014164, 116.0317511774861))
    # Tiles 4690 and 4691 are neighbours: the gap between footprints is under 1 % of a tile.
    side = g["Beijing/16_12614_4690"].bounds[3] - miny
    assert g["Beijing/16_12614_4690"].distance(g["Beijing/16_12614_4691"]) < 0.01 * side
    t = imagery.target_table()
    assert t["gdp"].count() == 19 and not (t["gdp"] == 10000.0).any()
    assert t["carbon"].count() == t["population"].count() == 24
    assert imagery.label_table()["city"].nunique() == 4


# --------------------------------------------------------------------------- helpers on generated data

def test_join_helpers_count_and_drop() -> None:
    df = pd.DataFrame({"id": [1, 2, 9], "v": [1.0, np.nan, 3.0]})
    kept, counts = restrict_to_regions(df, "id", [1, 2, 3], "t.csv")
    assert kept["id"].tolist() == [1, 2]
    assert counts == {"rows": 3, "matched": 2, "unknown_ids_dropped": 1, "regions_without_row": 1}
    long, left_out = long_targets(kept, "id", {"value": "v"})
    assert long["region_id"].tolist() == [1] and left_out == {"value": 1}
    with pytest.raises(BundleError, match="appears 2 times"):
        restrict_to_regions(pd.DataFrame({"id": [1, 1]}), "id", [1], "dup.csv")


def _write_gtfs(path: Path) -> None:
    files = {
        "stops.txt": "stop_id,stop_name,stop_lat,stop_lon\nA,a,0.0,0.0\nB,b,0.0,0.01\nC,c,0.0,0.02\n",
        "routes.txt": "route_id,route_short_name,route_type\nR,r,3\n",
        "trips.txt": "route_id,service_id,trip_id\nR,WK,T1\nR,WK,T2\nR,SUN,T3\n",
        "calendar.txt": ("service_id,monday,tuesday,wednesday,thursday,friday,saturday,sunday,start_date,end_date\n"
                         "WK,1,1,1,1,1,0,0,20200101,20201231\nSUN,0,0,0,0,0,0,1,20200101,20201231\n"),
        "stop_times.txt": ("trip_id,arrival_time,departure_time,stop_id,stop_sequence\n"
                           "T1,08:00:00,08:00:00,A,1\nT1,,,B,2\nT1,08:10:00,08:10:00,C,3\n"
                           "T2,25:00:00,25:00:00,C,1\nT2,25:05:00,25:05:00,A,2\n"
                           "T3,09:00:00,09:00:00,A,1\nT3,09:05:00,09:05:00,B,2\n"),
        "frequencies.txt": "trip_id,start_time,end_time,headway_secs\nT1,06:00:00,07:00:00,600\n",
    }
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)


def test_gtfs_trips_from_generated_feed(tmp_path: Path) -> None:
    feed = tmp_path / "gtfs.zip"
    _write_gtfs(feed)
    trips, counts = read_transit_trips(feed)
    assert counts["gtfs_trips_not_running_on_reference_date"] == 1  # T3 runs on Sundays only
    by_trip = trips.set_index(["trip_id", "time"])
    day = REFERENCE_DATE
    # T1 is frequency based: 6 runs in 06:00-07:00; the blank time at B is interpolated (08:05).
    assert by_trip.loc[("T1", day + pd.Timedelta(hours=6)), "count"] == 6
    assert by_trip.loc[("T1", day + pd.Timedelta(hours=6, minutes=5)), "count"] == 6
    # T2 has no frequencies: one run, after midnight of the service day.
    assert by_trip.loc[("T2", day + pd.Timedelta(hours=25)), "count"] == 1
    assert len(trips) == 3
    leg = trips[trips["trip_id"] == "T2"].iloc[0]
    assert (leg["origin"].x, leg["destination"].x) == (0.02, 0.0)
