"""GIS export, figures and HTML report on the real NYC-180 polygons with synthetic run tables.

The region polygons (``nyc_manhattan180/regions/mh-180.shp``) and the observed targets
(``nyc_manhattan180/targets/*.npy``) are real; embeddings, fusion weights, predictions, losses
and config are generated here from a seeded generator in the run-folder format.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import pytest
import shapely

from urbanrep.export import (
    ExportError,
    embedding_rgb,
    export_gis,
    export_run,
    join_regions,
    make_figures,
    predictions_wide,
    write_report,
)

MODALITIES = ["poi", "mobility", "landuse", "road", "remote_sensing"]
TARGETS = {"crime": "crime_counts_label.npy", "check_in": "check_in_label.npy"}
CHROMIUM = "/usr/bin/chromium"


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def regions(nyc_bundle) -> gpd.GeoDataFrame:
    """The 180 real Manhattan polygons (EPSG:4326), region_id 0..179 (data root or embedded copy)."""
    return nyc_bundle.regions[["region_id", "geometry"]].reset_index(drop=True)


@pytest.fixture(scope="module")
def tables(regions: gpd.GeoDataFrame, nyc_bundle) -> dict[str, pd.DataFrame]:
    """Synthetic run tables for the real regions: some regions lack embeddings / a modality."""
    rng = np.random.default_rng(7)
    ids = regions["region_id"].to_numpy()
    n = len(ids)
    xy = regions.to_crs("EPSG:32618").centroid
    coords = np.c_[xy.x, xy.y]
    coords = (coords - coords.mean(0)) / coords.std(0)
    # spatially smooth embedding (so the PCA map shows structure) + noise
    basis = rng.normal(size=(4, 16))
    feats = np.c_[coords, np.sin(2 * coords[:, :1]), coords[:, :1] * coords[:, 1:]]
    emb = feats @ basis + 0.1 * rng.normal(size=(n, 16))
    keep = np.ones(n, bool)
    keep[rng.choice(n, 6, replace=False)] = False
    embeddings = pd.DataFrame(emb[keep], index=pd.Index(ids[keep], name="region_id"),
                              columns=[f"emb_{i:03d}" for i in range(16)])
    w = rng.dirichlet(np.ones(len(MODALITIES)), size=n)
    no_road = rng.choice(n, 20, replace=False)
    w[no_road, MODALITIES.index("road")] = np.nan
    w = w / np.nansum(w, axis=1, keepdims=True)
    weights = pd.DataFrame(w, columns=MODALITIES).assign(region_id=ids)[["region_id", *MODALITIES]]
    rows = []
    for target in TARGETS:
        obs = nyc_bundle.target_table()[target].to_numpy(dtype=float)
        pred = np.clip(obs + rng.normal(scale=0.4 * obs.std(), size=n), 0, None)
        rows.append(pd.DataFrame({"region_id": ids, "target": target, "observed": obs, "predicted": pred}))
    predictions = pd.concat(rows, ignore_index=True)
    return {"embeddings": embeddings, "fusion_weights": weights, "predictions": predictions}


def make_run(run_dir: Path, tables: dict[str, pd.DataFrame]) -> Path:
    """Write a run folder in the pipeline's format from synthetic tables."""
    from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error

    run_dir.mkdir(parents=True, exist_ok=True)
    tables["embeddings"].to_parquet(run_dir / "embeddings.parquet")
    tables["fusion_weights"].to_parquet(run_dir / "fusion_weights.parquet", index=False)
    tables["predictions"].to_parquet(run_dir / "predictions.parquet", index=False)
    tasks = {}
    for target, g in tables["predictions"].groupby("target", sort=False):
        tasks[target] = {"mae": mean_absolute_error(g.observed, g.predicted),
                         "rmse": root_mean_squared_error(g.observed, g.predicted),
                         "r2": r2_score(g.observed, g.predicted), "r2_std": 0.021}
    metrics = {"protocol": "strict", "tasks": tasks, "clustering": {"nmi": 0.61, "ari": 0.42}}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    epochs = np.arange(1, 61)
    parts = {"aggregated": 3.0 * np.exp(-epochs / 15) + 0.5, "point": 2.0 * np.exp(-epochs / 25) + 0.3,
             "fusion": 1.5 * np.exp(-epochs / 10) + 0.2}
    loss = pd.DataFrame({"epoch": epochs, "total": sum(parts.values()), **parts})
    loss.to_csv(run_dir / "loss.csv", index=False)
    config = {"dataset": "nyc_manhattan180", "seed": 0, "epochs": 60,
              "model": {"hidden_channels": 64, "out_channels": 16, "fusion": "spatial"},
              "experts": ["poi", "mobility", "landuse", "road", "remote_sensing"]}
    (run_dir / "config.json").write_text(json.dumps(config))
    return run_dir


def _values_equal(a: pd.Series, b: pd.Series) -> None:
    np.testing.assert_allclose(a.to_numpy(dtype=float), b.to_numpy(dtype=float), rtol=1e-12, equal_nan=True)


# ---------------------------------------------------------------- joins


def test_join_keeps_all_regions_with_nan(regions: gpd.GeoDataFrame, tables: dict[str, pd.DataFrame]) -> None:
    emb = tables["embeddings"]
    shuffled = emb.sample(frac=1.0, random_state=1)  # row order must not matter
    gdf = join_regions(regions, shuffled, "embeddings")
    assert list(gdf["region_id"]) == list(regions["region_id"])
    assert gdf.crs == regions.crs
    missing = ~regions["region_id"].isin(emb.index).to_numpy()
    assert missing.sum() == 6
    assert gdf.loc[missing, "emb_000"].isna().all()
    _values_equal(gdf.loc[~missing, "emb_003"], emb.loc[regions["region_id"][~missing], "emb_003"])


def test_predictions_wide_pivots_and_averages_repeats() -> None:
    long = pd.DataFrame({
        "region_id": [1, 1, 2, 1, 2, 1],
        "target": ["a", "a", "a", "b", "b", "b"],
        "observed": [10.0, 10.0, 20.0, 1.0, 2.0, 1.0],
        "predicted": [8.0, 12.0, 18.0, 0.5, 2.5, 1.5],
        "repeat": [0, 1, 0, 0, 0, 1],
    })
    wide = predictions_wide(long)
    assert list(wide.columns) == ["obs_a", "pred_a", "obs_b", "pred_b"]
    assert wide.loc[1, "pred_a"] == 10.0 and wide.loc[2, "pred_a"] == 18.0
    assert wide.loc[1, "pred_b"] == 1.0 and wide.loc[2, "obs_b"] == 2.0
    with pytest.raises(ExportError, match="observed"):
        predictions_wide(long.drop(columns="observed"))


def test_bad_inputs_raise(regions: gpd.GeoDataFrame, tables: dict[str, pd.DataFrame], tmp_path: Path) -> None:
    emb = tables["embeddings"]
    with pytest.raises(ExportError, match="no CRS"):
        export_gis(regions.set_crs(None, allow_override=True), {"e": emb}, tmp_path)
    with pytest.raises(ExportError, match="unknown export format"):
        export_gis(regions, {"e": emb}, tmp_path, formats=("shp",))
    with pytest.raises(ExportError, match="duplicated region_id"):
        export_gis(regions, {"e": pd.concat([emb, emb.head(2)])}, tmp_path)
    with pytest.raises(ExportError, match="no 'region_id'"):
        export_gis(regions, {"e": emb.reset_index(drop=True)}, tmp_path)
    with pytest.raises(ExportError, match="none of its region_id"):
        export_gis(regions, {"e": emb.set_axis(emb.index.astype(str) + "x")}, tmp_path)
    with pytest.raises(ExportError, match="safe file name"):
        export_gis(regions, {"../e": emb}, tmp_path)
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("crs", [None, "EPSG:32618"], ids=["native-4326", "utm18n"])
def test_all_formats_round_trip(regions: gpd.GeoDataFrame, tables: dict[str, pd.DataFrame],
                                tmp_path: Path, crs: str | None) -> None:
    regs = regions if crs is None else regions.to_crs(crs)
    paths = export_gis(regs, tables, tmp_path)
    names = {p.name for p in paths}
    for t in tables:
        assert {f"{t}.parquet", f"{t}.geojson", f"{t}.csv"} <= names
    assert "regions.gpkg" in names and "crs.txt" in names
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporaries left behind"
    ids = list(regs["region_id"])
    expect = {t: join_regions(regs, df, t) for t, df in tables.items()}
    assert list(expect["predictions"].columns) == [
        "region_id", "obs_crime", "pred_crime", "obs_check_in", "pred_check_in", "geometry"]
    assert set(expect["fusion_weights"].columns) >= set(MODALITIES)

    layers = {row[0] for row in pyogrio.list_layers(tmp_path / "regions.gpkg")}
    assert layers == set(tables)
    for t, exp in expect.items():
        value_cols = [c for c in exp.columns if c not in ("region_id", "geometry")]
        readers = {
            "parquet": lambda t=t: gpd.read_parquet(tmp_path / f"{t}.parquet"),
            "gpkg": lambda t=t: gpd.read_file(tmp_path / "regions.gpkg", layer=t),
            "geojson": lambda t=t: gpd.read_file(tmp_path / f"{t}.geojson"),
        }
        for fmt, read in readers.items():
            got = read()
            assert list(got["region_id"]) == ids, (t, fmt)
            assert got.geometry.is_valid.all() and not got.geometry.is_empty.any(), (t, fmt)
            for c in value_cols:
                _values_equal(got[c], exp[c])
            if fmt == "geojson":  # RFC 7946: WGS84, 7 decimals, counter-clockwise exterior rings
                assert got.crs.to_epsg() == 4326
                ref = exp.geometry.to_crs("EPSG:4326").normalize()
                assert got.geometry.normalize().geom_equals_exact(ref, tolerance=1e-6).all(), t
            else:
                assert got.crs == regs.crs, (t, fmt, got.crs)
                # GeoPackage promotes mixed Polygon/MultiPolygon layers to MultiPolygon: compare as shapes
                assert got.geometry.geom_equals(exp.geometry).all(), (t, fmt)
        csv = pd.read_csv(tmp_path / f"{t}.csv")
        assert list(csv["region_id"]) == ids
        assert list(csv.columns[:3]) == ["region_id", "centroid_lon", "centroid_lat"]
        for c in value_cols:
            _values_equal(csv[c], exp[c])
        geoms = gpd.GeoSeries(shapely.from_wkt(csv["wkt"]), crs=regs.crs)
        assert geoms.is_valid.all()
        assert geoms.geom_equals_exact(exp.geometry, tolerance=1e-9).all()
        # centroids are WGS84 lon/lat inside Manhattan and inside (or next to) their polygon
        assert csv["centroid_lon"].between(-74.05, -73.90).all() and csv["centroid_lat"].between(40.68, 40.89).all()
        pts = gpd.GeoSeries(gpd.points_from_xy(csv["centroid_lon"], csv["centroid_lat"]), crs="EPSG:4326")
        dist = pts.to_crs("EPSG:32618").distance(exp.geometry.to_crs("EPSG:32618"))
        assert (dist < 200).all()
        # GDAL (QGIS, ogr2ogr) picks up the 'wkt' column as the geometry; the CSV has no CRS ...
        via_gdal = gpd.read_file(tmp_path / f"{t}.csv")
        assert via_gdal.crs is None
        assert via_gdal.set_crs(regs.crs).geometry.geom_equals_exact(exp.geometry, tolerance=1e-9).all()
    # ... crs.txt beside it names it
    assert (tmp_path / "crs.txt").read_text().strip() == ("EPSG:4326" if crs is None else crs)


def test_string_ids_projected_subset(regions: gpd.GeoDataFrame, tmp_path: Path) -> None:
    """A cut of 12 real polygons in EPSG:32618 with string region ids; GeoParquet + GeoJSON only."""
    regs = regions.iloc[40:52]
    regs = regs.assign(region_id="mh-" + regs["region_id"].astype(str))[["region_id", "geometry"]].to_crs(32618)
    vals = pd.DataFrame({"region_id": regs["region_id"].iloc[::2], "score": np.arange(6.0)})
    paths = export_gis(regs, {"score": vals}, tmp_path, formats=("parquet", "geojson"))
    assert sorted(p.name for p in paths) == ["score.geojson", "score.parquet"]
    got = gpd.read_parquet(tmp_path / "score.parquet")
    assert got.crs.to_epsg() == 32618 and list(got["region_id"]) == list(regs["region_id"])
    assert got["score"].isna().sum() == 6 and got["score"].iloc[2] == 1.0
    gj = gpd.read_file(tmp_path / "score.geojson")
    assert gj.crs.to_epsg() == 4326 and gj["region_id"].tolist() == regs["region_id"].tolist()
    assert gj.total_bounds[0] < -73.9 and 40.6 < gj.total_bounds[1] < 40.9


# ---------------------------------------------------------------- atomicity


@pytest.mark.parametrize("fmt,method", [("parquet", "to_parquet"), ("gpkg", "to_file"),
                                        ("geojson", "to_file"), ("csv", None)])
def test_failed_write_leaves_no_partial_file(regions: gpd.GeoDataFrame, tables: dict[str, pd.DataFrame],
                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             fmt: str, method: str | None) -> None:
    target = tmp_path / ("regions.gpkg" if fmt == "gpkg" else f"embeddings.{fmt}")
    sub = {"embeddings": tables["embeddings"], "fusion_weights": tables["fusion_weights"]}
    export_gis(regions, sub, tmp_path, formats=(fmt,))
    before = target.read_bytes()
    calls = {"n": 0}

    def half_then_fail(self, path, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        calls["n"] += 1
        Path(path).write_bytes(b"partial")  # a writer that dies after writing part of the file
        raise OSError("disk full")

    if method is None:
        monkeypatch.setattr(pd.DataFrame, "to_csv", half_then_fail)
    else:
        monkeypatch.setattr(gpd.GeoDataFrame, method, half_then_fail)
    shifted = {k: v + 1.0 if k == "embeddings" else v for k, v in sub.items()}
    with pytest.raises(OSError, match="disk full"):
        export_gis(regions, shifted, tmp_path, formats=(fmt,))
    assert calls["n"] == 1
    assert target.read_bytes() == before, "old file must stay intact"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporaries left behind"

    fresh = tmp_path / "fresh"
    with pytest.raises(OSError, match="disk full"):
        export_gis(regions, shifted, fresh, formats=(fmt,))
    assert list(fresh.iterdir()) == [], "a failed first write must leave nothing"


# ---------------------------------------------------------------- run folder, figures, report


@pytest.fixture(scope="module")
def run_dir(tables: dict[str, pd.DataFrame], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs") / "run-001", tables)


def test_export_run_defaults_to_gis_folder(run_dir: Path, regions: gpd.GeoDataFrame) -> None:
    paths = export_run(run_dir, regions, formats=("parquet", "gpkg"))
    assert {p.parent for p in paths} == {run_dir / "gis"}
    emb = gpd.read_parquet(run_dir / "gis" / "embeddings.parquet")
    assert emb.shape == (180, 18) and emb["emb_000"].isna().sum() == 6
    pred = gpd.read_file(run_dir / "gis" / "regions.gpkg", layer="predictions")
    assert {"obs_crime", "pred_crime", "obs_check_in", "pred_check_in"} <= set(pred.columns)
    (run_dir / "empty").mkdir(exist_ok=True)
    with pytest.raises(ExportError, match="holds none of"):
        export_run(run_dir / "empty", regions)
    with pytest.raises(ExportError, match="does not exist"):
        export_run(run_dir / "missing", regions)


def test_embedding_rgb_in_unit_cube(tables: dict[str, pd.DataFrame]) -> None:
    rgb = embedding_rgb(tables["embeddings"])
    assert rgb.shape == (174, 3) and rgb.index.name == "region_id"
    assert rgb.to_numpy().min() >= 0 and rgb.to_numpy().max() <= 1
    assert (rgb.std() > 0.1).all()  # three informative channels
    tiny = embedding_rgb(pd.DataFrame({"region_id": [1, 2], "a": [0.0, 1.0]}))
    assert np.allclose(tiny[["g", "b"]], 0.5)


def _png_ok(path: Path, min_colors: int = 8) -> None:
    from PIL import Image

    assert path.exists() and path.stat().st_size > 5_000, path
    with Image.open(path) as im:
        im = im.convert("RGB")
        assert im.width > 200 and im.height > 200
        colors = im.getcolors(maxcolors=1 << 20)
        assert colors is not None and len(colors) >= min_colors, f"{path.name}: nearly one colour"


def test_figures(run_dir: Path, regions: gpd.GeoDataFrame, tmp_path: Path) -> None:
    figs = make_figures(run_dir, regions, out_dir=tmp_path / "figs")
    expected = {"embedding_pca", "pred_vs_obs_crime", "pred_vs_obs_check_in", "loss", "pred_map_crime",
                "pred_map_check_in", *(f"fusion_weight_{m}" for m in MODALITIES)}
    assert set(figs) == expected
    for name, path in figs.items():
        assert path.parent == tmp_path / "figs" and path.suffix == ".png"
        _png_ok(path, min_colors=100 if name == "embedding_pca" else 8)
    # without regions only the non-map figures; a loss with negative parts still draws (symlog)
    run2 = tmp_path / "run2"
    run2.mkdir()
    shutil.copy(run_dir / "predictions.parquet", run2)
    pd.DataFrame({"epoch": [1, 2, 3], "total": [1.0, 0.5, 0.1], "mi": [-0.2, -0.4, -0.5]}).to_csv(
        run2 / "loss.csv", index=False)
    figs2 = make_figures(run2)
    assert set(figs2) == {"pred_vs_obs_crime", "pred_vs_obs_check_in", "loss"}
    assert all(p.parent == run2 / "figures" for p in figs2.values())
    _png_ok(figs2["loss"])


def test_report_html(run_dir: Path, regions: gpd.GeoDataFrame) -> None:
    path = write_report(run_dir, regions)
    assert path == run_dir / "report.html"
    text = path.read_text(encoding="utf-8")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert f"{metrics['tasks']['crime']['r2']:.4f}" in text
    assert f"{metrics['tasks']['check_in']['mae']:.1f}" in text
    assert "NMI" in text and "0.6100" in text and "strict" in text
    assert "hidden_channels" in text and "nyc_manhattan180" in text
    # 1 PCA map + 5 weights + 2 prediction/error maps + 2 scatters + loss
    assert text.count('src="data:image/png;base64,') == 11
    assert "http://" not in text and "https://" not in text and "<script src" not in text  # offline, no CDN
    assert "unshuffled" not in text and "shuffled 5-fold" in text  # the strict protocol in words
    assert "Interactive map" in text and text.count('<path data-i="') == 180
    assert (run_dir / "figures" / "embedding_pca.png").exists()
    linked = write_report(run_dir, regions, embed_images=False)
    assert 'src="figures/loss.png"' in linked.read_text(encoding="utf-8")


def test_report_bad_metrics_json(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text("{not json")
    with pytest.raises(ExportError, match="metrics.json"):
        write_report(run)
    assert not (run / "report.html").exists()


def test_report_renders_in_headless_chromium(run_dir: Path, regions: gpd.GeoDataFrame, tmp_path: Path) -> None:
    if not (os.path.exists(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f"{CHROMIUM} not found: install it with 'apt-get install -y chromium' to render the report")
    from PIL import Image

    report = write_report(run_dir, regions)
    shot = tmp_path / "shot.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
           "--window-size=1200,1600", report.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert shot.exists(), f"chromium wrote no screenshot (rc={proc.returncode}): {proc.stderr[-2000:]}"
    with Image.open(shot) as im:
        im = im.convert("RGB")
        assert im.size == (1200, 1600)
        colors = im.getcolors(maxcolors=1 << 22)
        assert colors is not None and len(colors) > 500, "screenshot is nearly one colour"
        top = max(c for c, _ in colors)
        assert top < 0.95 * im.width * im.height, "screenshot is mostly one colour (blank page?)"
        # the embedding map (saturated PCA colours) must be on screen: many strongly coloured pixels
        hsv = np.asarray(im.convert("HSV"))
        assert ((hsv[..., 1] > 120) & (hsv[..., 2] > 60)).sum() > 20_000, "no figure visible"


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium with the network off (every host unresolvable, proxy to a closed port)."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
           "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=http://127.0.0.1:9",
           f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def test_report_scatter_r2_is_the_table_r2(run_dir: Path, regions: gpd.GeoDataFrame) -> None:
    """One R² per target: the scatter titles carry metrics.json's R², not one of the averaged points."""
    from urbanrep.export.maps import plot_predictions

    preds = pd.read_parquet(run_dir / "predictions.parquet")
    reported = {"crime": {"r2": 0.123456, "r2_std": 0.01}}
    titles: list[str] = []
    import matplotlib.axes

    real = matplotlib.axes.Axes.set_title

    def spy(self, label, *a, **k):  # type: ignore[no-untyped-def]
        titles.append(label)
        return real(self, label, *a, **k)

    matplotlib.axes.Axes.set_title = spy  # type: ignore[method-assign]
    try:
        plot_predictions(preds, run_dir / "figs", reported)
    finally:
        matplotlib.axes.Axes.set_title = real  # type: ignore[method-assign]
    assert any(t.startswith("crime: R² = 0.123 ± 0.010") for t in titles), titles


def test_report_targets_flags_and_protocol(run_dir: Path, regions: gpd.GeoDataFrame, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    preds = pd.read_parquet(run / "predictions.parquet")
    preds.loc[preds.index[:3], "predicted"] = -1.0  # three negative predictions of crime counts
    preds.loc[preds.index[3], "observed"] = 0.0
    preds.to_parquet(run / "predictions.parquet", index=False)
    info = {"crime": {"definition": "crime records in the region", "unit": "crimes (count)", "kind": "count"}}
    text = write_report(run, regions, targets=info).read_text(encoding="utf-8")
    assert "crime records in the region" in text and "crimes (count)" in text
    assert "3 of 180" in text and "3 out-of-fold prediction(s) are negative" in text
    assert "crime: 1 region(s) have the value 0" in text


def test_report_reads_targets_described_by_their_definition_alone(run_dir: Path, regions: gpd.GeoDataFrame,
                                                                   tmp_path: Path) -> None:
    """Most converters describe a target by a string (its definition): the report reads it from the
    bundle's manifest (it used to fail on every city but NYC-180)."""
    import json

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    (run / "bundle").mkdir(exist_ok=True)
    (run / "bundle" / "manifest.json").write_text(json.dumps(
        {"provenance": {"targets": {"crime": "crime count (Chicago Data Portal)", "odd": 3}}}), encoding="utf-8")
    text = write_report(run, regions).read_text(encoding="utf-8")
    assert "crime count (Chicago Data Portal)" in text
    text = write_report(run, regions, targets={"crime": "crimes, as a string"}).read_text(encoding="utf-8")
    assert "crimes, as a string" in text


def test_report_interactive_map_works_offline_in_headless_chromium(run_dir: Path, regions: gpd.GeoDataFrame,
                                                                   tmp_path: Path) -> None:
    """The report's map script runs with the network off and builds the hover panel of a region."""
    if not (os.path.exists(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f"{CHROMIUM} not found: install it with 'apt-get install -y chromium' to render the report")
    report = write_report(run_dir, regions)
    url = report.resolve().as_uri() + "#region=42"  # same handler as hovering region 42
    proc = _chromium(tmp_path, "--dump-dom", url)
    dom = proc.stdout
    assert 'data-map-ready="1"' in dom, f"map script did not run (rc={proc.returncode}): {proc.stderr[-2000:]}"
    panel = dom[dom.index('id="urbanrep-map-info"'):]
    panel = panel[:panel.index("</div>")]
    assert 'data-region="42"' in panel and "region 42" in panel
    assert "crime" in panel and "check_in" in panel and "fusion weights" in panel and "mobility" in panel
    assert 'class="hl"' in dom  # the hovered region is outlined
    shot = tmp_path / "map.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,1400", url)
    assert shot.exists()
    if os.environ.get("URBANREP_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["URBANREP_KEEP_SCREENSHOT"])
