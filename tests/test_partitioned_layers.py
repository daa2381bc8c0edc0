"""Point layers kept on disk (ParquetLayer): same graph as in memory, bad records counted, CRS handled."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pyproj
import pytest
import shapely
from helpers import assert_same_graph
from shapely.geometry import box

from urbanrep.bundle import CityBundle, read_bundle, validate_bundle, write_bundle
from urbanrep.bundle.partitioned import ParquetLayer, open_parquet_layer
from urbanrep.errors import BundleError
from urbanrep.graphs import GraphConfig, build_graph

CRS = "EPSG:32618"


def _city(n: int = 8, pois: int = 3000, trips: int = 2500, seed: int = 0):
    """An n x n grid of 500 m cells with skewed POIs and trips, plus bad records of every kind."""
    rng = np.random.default_rng(seed)
    cells = [box(i * 500, j * 500, (i + 1) * 500, (j + 1) * 500) for j in range(n) for i in range(n)]
    regions = gpd.GeoDataFrame({"region_id": [f"z{k:03d}" for k in range(n * n)]}, geometry=cells, crs=CRS)
    side = n * 500.0
    xy = np.clip(rng.normal(side * 0.4, side * 0.2, size=(pois, 2)), -300, side + 300)  # some outside
    xy[:40] = np.round(xy[:40] / 500) * 500  # on shared edges and corners (ties by rank)
    cats = rng.choice(np.array(["food", "shop", "school", "park"], dtype=object), pois, p=[0.5, 0.3, 0.15, 0.05])
    cats[rng.random(pois) < 0.02] = None  # missing category
    poi_df = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "category": cats})
    poi_df.loc[rng.random(pois) < 0.01, ["x", "y"]] = np.nan  # missing coordinates
    o = rng.normal(side * 0.5, side * 0.25, size=(trips, 2))
    d = o + rng.normal(0, side * 0.2, size=(trips, 2))
    t = (np.datetime64("2024-03-01T00:00:00", "s") + rng.integers(0, 7 * 86400, trips).astype("timedelta64[s]"))
    trip_df = pd.DataFrame({"origin_x": o[:, 0], "origin_y": o[:, 1], "destination_x": d[:, 0],
                            "destination_y": d[:, 1], "time": pd.to_datetime(t),
                            "count": rng.integers(1, 4, trips).astype(np.int64)})
    trip_df.loc[rng.random(trips) < 0.03, "time"] = pd.NaT
    trip_df.loc[rng.random(trips) < 0.01, ["destination_x", "destination_y"]] = np.nan
    return regions, poi_df, trip_df


def _in_memory(regions, poi_df, trip_df, crs=CRS) -> CityBundle:
    """The same records as GeoDataFrames (missing coordinates become missing geometries)."""
    def pts(x, y):
        g = shapely.points(np.stack([x, y], axis=1))
        g[~(np.isfinite(x) & np.isfinite(y))] = None
        return g

    pois = gpd.GeoDataFrame({"category": poi_df["category"]}, geometry=pts(poi_df["x"].to_numpy(),
                                                                          poi_df["y"].to_numpy()), crs=crs)
    trips = gpd.GeoDataFrame({"time": trip_df["time"], "count": trip_df["count"]},
                             geometry=pts(trip_df["origin_x"].to_numpy(), trip_df["origin_y"].to_numpy()),
                             crs=crs).rename_geometry("origin")
    trips["destination"] = gpd.GeoSeries(pts(trip_df["destination_x"].to_numpy(),
                                             trip_df["destination_y"].to_numpy()), crs=crs)
    return CityBundle(name="grid", regions=regions, pois=pois, trips=trips)


def _xy_bundle(tmp: Path, regions, poi_df, trip_df, crs: str | None = CRS, row_group: int = 400) -> Path:
    """A bundle whose pois / trips are plain Parquet with x/y columns in several row groups."""
    write_bundle(CityBundle(name="grid", regions=regions), tmp)
    manifest = json.loads((tmp / "manifest.json").read_text())
    for name, df in (("pois", poi_df), ("trips", trip_df)):
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), tmp / f"{name}.parquet",
                       row_group_size=row_group)
        manifest["layers"][name] = {"file": f"{name}.parquet", "records": len(df), **({"crs": crs} if crs else {})}
    (tmp / "manifest.json").write_text(json.dumps(manifest))
    return tmp


@pytest.fixture(scope="module")
def city():
    return _city()


@pytest.fixture(scope="module")
def reference(city):
    regions, poi_df, trip_df = city
    bundle, _ = validate_bundle(_in_memory(regions, poi_df, trip_df))
    return build_graph(bundle, GraphConfig(knn_exact_max=20))


@pytest.fixture(scope="module")
def dask_engine():
    pytest.importorskip("distributed", reason="Dask not installed (pip install 'urbanrep[distributed]')")
    from urbanrep.engine import get_engine

    engine = get_engine("dask", partitions=3, n_workers=2, threads_per_worker=1, processes=False, min_points=0)
    yield engine
    engine.close()


def _build(bundle: CityBundle, engine, monkeypatch, **config):
    import urbanrep.graphs.build as build_module

    if engine is not None:
        monkeypatch.setattr(build_module, "engine_for", lambda cfg: engine)
    return build_graph(bundle, GraphConfig(knn_exact_max=20, **config))


@pytest.mark.parametrize("engine_name", ["local", "dask"])
def test_xy_layers_give_the_in_memory_graph(city, reference, tmp_path, monkeypatch, engine_name, request) -> None:
    engine = request.getfixturevalue("dask_engine") if engine_name == "dask" else None
    root = _xy_bundle(tmp_path / "b", *city)
    bundle = read_bundle(root)  # auto: x/y coordinate layers stay on disk
    assert isinstance(bundle.pois, ParquetLayer) and isinstance(bundle.trips, ParquetLayer)
    assert bundle.pois.row_groups == 8 and bundle.trips.row_groups == 7
    data, report = _build(bundle, engine, monkeypatch)
    ref, ref_report = reference
    assert_same_graph(ref, data)
    poi_df, trip_df = city[1], city[2]
    missing = int(poi_df["x"].isna().sum())
    # Every bad record is counted: in memory, validation dropped the missing geometries.
    assert report["poi"]["missing_coordinates"] == missing > 0
    assert report["poi"]["points"] == len(poi_df) == ref_report["poi"]["points"] + missing
    assert report["poi"]["outside_regions"] == ref_report["poi"]["outside_regions"] > 0
    assert report["poi"]["no_category"] == int(poi_df["category"].isna().sum()) > 0
    assert report["poi"]["assigned"] == ref_report["poi"]["assigned"]
    mob = report["mobility"]
    assert mob["missing_coordinates"] > 0 and mob["dropped_trips"] > mob["missing_coordinates"]
    assert mob["trips_without_time"] == ref_report["mobility"]["trips_without_time"] > 0
    assert mob["trips"] == len(trip_df)
    assert any("missing / non-finite coordinates" in line for line in report["dropped"])


def test_geoparquet_wkb_layers_in_row_groups(city, reference, tmp_path, monkeypatch) -> None:
    """A bundle written by write_bundle (GeoParquet WKB), re-written in row groups, read partitioned."""
    regions, poi_df, trip_df = city
    mem, _ = validate_bundle(_in_memory(regions, poi_df, trip_df))
    root = tmp_path / "wkb"
    write_bundle(mem, root)
    for name in ("pois", "trips"):
        pq.write_table(pq.read_table(root / f"{name}.parquet"), root / f"{name}.parquet", row_group_size=300)
    bundle = read_bundle(root, partitioned=True)
    assert isinstance(bundle.pois, ParquetLayer) and bundle.pois.row_groups > 5
    assert bundle.pois.point_spec("geometry") == "geometry" and bundle.trips.point_spec("origin") == "origin"

    def no_loading(*args, **kwargs):
        raise AssertionError("a partitioned layer was loaded whole")

    monkeypatch.setattr(gpd, "read_parquet", no_loading)
    monkeypatch.setattr(gpd.GeoDataFrame, "from_arrow", no_loading, raising=False)
    data, _ = _build(bundle, None, monkeypatch)
    assert_same_graph(reference[0], data)
    # Only the trips on disk: the POIs in memory, same graph again.
    monkeypatch.undo()
    mixed = read_bundle(root, partitioned=("trips",))
    assert isinstance(mixed.trips, ParquetLayer) and isinstance(mixed.pois, gpd.GeoDataFrame)
    assert_same_graph(reference[0], _build(mixed, None, monkeypatch)[0])


def test_other_crs_is_transformed_per_batch(city, tmp_path, monkeypatch) -> None:
    """x/y in longitude/latitude, regions in UTM: the same graph as the in-memory reprojection."""
    regions, poi_df, trip_df = city
    to_ll = pyproj.Transformer.from_crs(CRS, "EPSG:4326", always_xy=True)
    ll_pois, ll_trips = poi_df.copy(), trip_df.copy()
    ll_pois["x"], ll_pois["y"] = to_ll.transform(poi_df["x"].to_numpy() + 580_000, poi_df["y"].to_numpy() + 4_500_000)
    for end in ("origin", "destination"):
        ll_trips[f"{end}_x"], ll_trips[f"{end}_y"] = to_ll.transform(
            trip_df[f"{end}_x"].to_numpy() + 580_000, trip_df[f"{end}_y"].to_numpy() + 4_500_000)
    moved = regions.set_geometry(shapely.transform(regions.geometry.values, lambda c: c + [580_000, 4_500_000]))
    mem, vrep = validate_bundle(_in_memory(moved, ll_pois, ll_trips, crs="EPSG:4326"))
    assert "pois" in vrep.reprojected
    ref, _ = build_graph(mem, GraphConfig(knn_exact_max=20))
    bundle = read_bundle(_xy_bundle(tmp_path / "ll", moved, ll_pois, ll_trips, crs="EPSG:4326"))
    assert pyproj.CRS.from_user_input(bundle.pois.crs).to_epsg() == 4326
    data, _ = _build(bundle, None, monkeypatch)
    assert_same_graph(ref, data)


def test_nyc_raw_trips_partitioned(tmp_path, monkeypatch, request) -> None:
    """The embedded NYC-180 bundle's raw trips (GeoParquet, EPSG:4326), in 8 row groups, both engines."""
    from urbanrep.datasets import embedded_path

    root = tmp_path / "nyc"
    shutil.copytree(embedded_path(), root)
    pq.write_table(pq.read_table(root / "trips.parquet"), root / "trips.parquet", row_group_size=100)
    config = dict(mobility_source="raw", modalities=("mobility",))
    ref, ref_report = build_graph(read_bundle(root, partitioned=False), GraphConfig(**config))
    bundle = read_bundle(root, partitioned=True)
    assert isinstance(bundle.trips, ParquetLayer) and bundle.trips.row_groups == 8
    data, report = _build(bundle, None, monkeypatch, **config)
    assert_same_graph(ref, data)
    assert data["region", "mobility", "region"].edge_attr.shape[1] == 7
    for key in ("trips", "dropped_trips", "trips_without_time", "origin_unlocated", "dest_unlocated"):
        assert report["mobility"][key] == ref_report["mobility"][key], key
    if pytest.importorskip("distributed", reason="Dask not installed"):
        on_dask, _ = _build(bundle, request.getfixturevalue("dask_engine"), monkeypatch, **config)
        assert_same_graph(ref, on_dask)


def test_validate_scans_by_row_group(city, tmp_path, capsys) -> None:
    regions, poi_df, trip_df = city
    root = _xy_bundle(tmp_path / "v", *city)
    bundle, report = validate_bundle(read_bundle(root, validate=False), scan=True)
    assert isinstance(bundle.pois, ParquetLayer)
    info = report.partitioned["pois"]
    assert info["rows"] == len(poi_df) and info["row_groups"] == 8
    assert info["null_values"]["category"] == int(poi_df["category"].isna().sum())
    assert info["bad_records"]["missing_coordinates"] == int(poi_df["x"].isna().sum())
    assert info["bad_records"]["no_category"] == int(poi_df["category"].isna().sum())
    xy = poi_df[["x", "y"]].dropna().to_numpy()
    inside = (xy >= 0).all(axis=1) & (xy <= 4000).all(axis=1)
    assert report.outside_regions["pois"] == info["bad_records"]["outside_regions"] == int((~inside).sum())
    assert report.partitioned["trips"]["bad_records"]["missing_coordinates"] == int(trip_df["destination_x"].isna().sum())
    from urbanrep.cli import main

    assert main(["validate", str(root)]) == 0
    assert "kept on disk" in capsys.readouterr().out
    # Written again, the layers stay files (linked or copied), marked partitioned in the manifest.
    out = tmp_path / "copy"
    write_bundle(bundle, out)
    entry = json.loads((out / "manifest.json").read_text())["layers"]["trips"]
    assert entry["partitioned"] and entry["geometry"]["origin"] == ["origin_x", "origin_y"]
    again = read_bundle(out)
    assert isinstance(again.trips, ParquetLayer) and again.trips.rows == len(trip_df)


def test_partitioned_layer_errors(city, tmp_path) -> None:
    regions, poi_df, trip_df = city
    root = _xy_bundle(tmp_path / "nocrs", regions, poi_df, trip_df, crs=None)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest.pop("crs")
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"pois\.parquet.*no CRS.*manifest"):
        open_parquet_layer(root / "pois.parquet", "pois")
    pq.write_table(pa.Table.from_pandas(poi_df.drop(columns="category")), tmp_path / "nocat.parquet")
    with pytest.raises(BundleError, match="nocat.parquet.*'category'"):
        open_parquet_layer(tmp_path / "nocat.parquet", "pois", crs=CRS)
    pq.write_table(pa.Table.from_pandas(trip_df.drop(columns=["destination_x"])), tmp_path / "half.parquet")
    with pytest.raises(BundleError, match="half.parquet.*origin and destination"):
        open_parquet_layer(tmp_path / "half.parquet", "trips", crs=CRS)
    with pytest.raises(BundleError, match="only pois, trips"):
        open_parquet_layer(tmp_path / "half.parquet", "roads", crs=CRS)
    root = _xy_bundle(tmp_path / "forced", *city)
    with pytest.raises(BundleError, match="plain coordinate columns.*partitioned"):
        read_bundle(root, partitioned=False)
    with pytest.raises(BundleError, match="cannot be read in partitions"):
        read_bundle(root, partitioned=("roads",))


def test_negative_count_rejected_with_row_group(city, tmp_path) -> None:
    regions, poi_df, trip_df = city
    bad = trip_df.copy()
    bad.loc[1000, "count"] = -2
    root = _xy_bundle(tmp_path / "neg", regions, poi_df, bad)
    from urbanrep.errors import GraphError

    with pytest.raises(GraphError, match="negative counts.*trips.parquet, row group 2"):
        build_graph(read_bundle(root), GraphConfig(knn_exact_max=20))
    with pytest.raises(BundleError, match="row group 2.*'count'"):
        validate_bundle(read_bundle(root, validate=False), scan=True)


def test_streamed_synthetic_city(tmp_path, monkeypatch) -> None:
    """write_city_parquet: row groups of x/y points, read on disk, graph on both paths of the same file."""
    from experiments.synthetic_city import SyntheticCityConfig, write_city_parquet

    config = SyntheticCityConfig(num_regions=400, num_pois=30_000, num_trips=20_000, seed=3)
    timings = write_city_parquet(config, tmp_path / "city", row_group_size=6_000)
    assert timings["pois"] == 30_000 and not (tmp_path / ".city.staging").exists()
    bundle = read_bundle(tmp_path / "city")
    assert isinstance(bundle.pois, ParquetLayer) and bundle.pois.row_groups == 5 and bundle.trips.row_groups == 4
    assert bundle.pois.point_spec("geometry") == ("x", "y")
    data, report = _build(bundle, None, monkeypatch)
    assert report["poi"]["assigned"] + report["poi"]["outside_regions"] == 30_000
    assert 0 < report["poi"]["outside_regions"] < 3_000  # a few background points fall outside the city
    assert data["region", "mobility", "region"].edge_attr.shape[1] == 7
    # Same seed, same city; chunk streams are independent of each other.
    write_city_parquet(config, tmp_path / "again", row_group_size=6_000)
    assert pq.read_table(tmp_path / "again" / "trips.parquet").equals(pq.read_table(tmp_path / "city" / "trips.parquet"))


def test_gravity_rejection_sampler_matches_dense() -> None:
    """Above DENSE_GRAVITY_MAX hotspots destinations follow the same gravity model without an H x H matrix."""
    import experiments.synthetic_city as sc

    act = sc._Activity(np.random.default_rng(1), 10_000.0, 25)
    dense = sc._Gravity(act)
    old = sc.DENSE_GRAVITY_MAX
    try:
        sc.DENSE_GRAVITY_MAX = 0
        sparse = sc._Gravity(act)
    finally:
        sc.DENSE_GRAVITY_MAX = old
    assert dense.trans is not None and sparse.trans is None
    origin = np.repeat(np.array([2, 17]), 100_000)
    draws = sparse.sample(np.random.default_rng(5), origin)
    for o in (2, 17):
        freq = np.bincount(draws[origin == o], minlength=25) / 100_000
        assert np.abs(freq - dense.trans[o]).max() < 0.006  # ~4 standard errors at p = 0.25
