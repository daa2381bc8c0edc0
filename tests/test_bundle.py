"""City bundle format: round trip, real data, and every bad-input case with a real-format bad file."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
from shapely.geometry import Point, Polygon

from tests.conftest import grid_bundle
from urbanrep.bundle import Aggregate, read_bundle, validate_bundle, write_bundle
from urbanrep.cli import main
from urbanrep.errors import BundleError


def test_round_trip(tmp_path: Path) -> None:
    b = grid_bundle()
    write_bundle(b, tmp_path / "b")
    r = read_bundle(tmp_path / "b")
    assert list(r.region_ids) == list(b.region_ids)
    assert r.crs.to_epsg() == 32618
    assert r.modalities == ["poi", "mobility"]
    pd.testing.assert_frame_equal(r.aggregates["od"].table, b.aggregates["od"].table)
    assert r.target_table().shape == (16, 1)
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["schema_version"] == 1 and manifest["layers"]["pois"]["records"] == 50


def test_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    b = grid_bundle()
    write_bundle(b, tmp_path / "b")
    before = sorted(p.name for p in (tmp_path / "b").iterdir())

    def boom(*a, **k):  # noqa: ANN002, ANN003
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", boom)
    with pytest.raises(OSError):
        write_bundle(b, tmp_path / "b", overwrite=True)
    with pytest.raises(OSError):
        write_bundle(b, tmp_path / "new")
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_nyc_real_bundle(nyc_bundle_dir: Path, data_root: Path) -> None:
    b = read_bundle(nyc_bundle_dir)
    assert len(b.regions) == 180 and b.crs.to_epsg() == 4326
    assert b.modalities == ["poi", "mobility", "landuse", "remote_sensing"]
    assert set(b.target_table().columns) == {"crime", "check_in", "service_call", "carbon", "income"}
    od, mask = b.aggregates["od_trips"].dense(b.region_ids)
    np.testing.assert_array_equal(od[0], np.load(data_root / "nyc_manhattan180/features/mob_label.npy"))
    assert mask.all()
    sliced, _ = b.aggregates["od_trips_by_slice"].dense(b.region_ids)
    assert sliced.shape == (7, 180, 180)
    assert "hrep_checkin_similarity" not in json.dumps(
        {k: v.description for k, v in b.aggregates.items()})


def test_missing_crs(tmp_path: Path) -> None:
    b = grid_bundle()
    write_bundle(b, tmp_path / "b")
    regions = gpd.read_parquet(tmp_path / "b" / "regions.parquet")
    regions.set_crs(None, allow_override=True).to_parquet(tmp_path / "b" / "regions.parquet")
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    manifest["crs"] = None
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"no CRS.*set_crs"):
        read_bundle(tmp_path / "b")
    pois = b.pois.set_crs(None, allow_override=True)
    with pytest.raises(BundleError, match=r"'pois' has no CRS"):
        validate_bundle(replace(b, pois=pois))


def test_other_crs_is_reprojected(caplog: pytest.LogCaptureFixture) -> None:
    b = grid_bundle()
    pois = b.pois.to_crs("EPSG:4326")
    with caplog.at_level(logging.INFO):
        out, report = validate_bundle(replace(b, pois=pois))
    assert report.reprojected == ["pois"]
    assert out.pois.crs.equals(b.crs)
    np.testing.assert_allclose(out.pois.geometry.x, b.pois.geometry.x, atol=1e-3)
    assert "reprojecting layer pois" in caplog.text


def test_invalid_geometry_repaired(tmp_path: Path) -> None:
    b = grid_bundle()
    bowtie = Polygon([(0, 0), (1000, 1000), (1000, 0), (0, 1000)])
    regions = b.regions.copy()
    regions.loc[0, "geometry"] = bowtie
    regions.to_parquet(tmp_path / "regions.parquet")  # a real file with an invalid polygon
    regions = gpd.read_parquet(tmp_path / "regions.parquet")
    out, report = validate_bundle(replace(b, regions=regions))
    assert report.repaired_geometries == {"regions": 1}
    assert out.regions.is_valid.all()
    assert out.regions.geom_type.isin(["Polygon", "MultiPolygon"]).all()


@pytest.mark.parametrize("ids,match", [(["a", "a", "b", "c"], "duplicate region_id values a"),
                                       (["a", None, "b", "c"], "missing region_id at rows 1")])
def test_bad_region_ids(ids: list, match: str) -> None:
    regions = grid_bundle(2).regions.assign(region_id=ids)
    with pytest.raises(BundleError, match=match):
        validate_bundle(replace(grid_bundle(2), regions=regions, targets=None, aggregates={}))


def test_empty_regions(tmp_path: Path) -> None:
    b = grid_bundle()
    write_bundle(b, tmp_path / "b")
    b.regions.iloc[:0].to_parquet(tmp_path / "b" / "regions.parquet")
    with pytest.raises(BundleError, match="regions layer is empty"):
        read_bundle(tmp_path / "b")


def test_points_outside_are_counted() -> None:
    b = grid_bundle()
    extra = gpd.GeoDataFrame({"category": ["x", "y"]}, geometry=[Point(-500, -500), Point(99999, 5)], crs=b.crs)
    out, report = validate_bundle(replace(b, pois=pd.concat([b.pois, extra], ignore_index=True)))
    assert report.outside_regions == {"pois": 2}
    assert len(out.pois) == 52  # kept, not silently dropped
    assert any("2 records of pois lie outside" in line for line in report.lines())


def test_nan_and_inf_rejected(tmp_path: Path) -> None:
    b = grid_bundle()
    table = pd.DataFrame({"region_id": b.region_ids, "c0": 1.0, "c1": 2.0})
    table.loc[3, "c1"] = np.nan
    table.loc[7, "c1"] = np.inf
    b2 = replace(b, aggregates={"poi": Aggregate("poi", "poi", "vector", table)})
    with pytest.raises(BundleError, match=r"column 'c1' has 2 NaN/inf values at rows 3, 7"):
        validate_bundle(b2)
    write_bundle(b, tmp_path / "b")
    t = pd.read_parquet(tmp_path / "b" / "targets.parquet")
    t.loc[5, "value"] = np.nan
    t.to_parquet(tmp_path / "b" / "targets.parquet")
    with pytest.raises(BundleError, match=r"targets: column 'value' has 1 NaN/inf values at rows 5"):
        read_bundle(tmp_path / "b")


def test_targets_for_unknown_regions() -> None:
    b = grid_bundle()
    t = pd.concat([b.targets, pd.DataFrame({"region_id": ["zz"], "target": ["population"], "value": [1.0]})])
    with pytest.raises(BundleError, match=r"targets refers to region ids not in the regions layer: zz"):
        validate_bundle(replace(b, targets=t))


def test_unknown_layer_and_modality(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"unknown modality 'weather'; valid modalities: poi, mobility"):
        Aggregate("w", "weather", "vector", pd.DataFrame())
    b = grid_bundle()
    write_bundle(b, tmp_path / "b")
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    manifest["layers"]["buildings"] = {"file": "buildings.parquet"}
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"unknown layer names \['buildings'\]; valid layer names: regions, pois"):
        read_bundle(tmp_path / "b")
    with pytest.raises(BundleError, match="unknown layer"):
        b.layer("buildings")


def test_truncated_file(tmp_path: Path) -> None:
    b = grid_bundle()
    write_bundle(b, tmp_path / "b")
    f = tmp_path / "b" / "pois.parquet"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(BundleError, match=r"cannot read .*pois.parquet: the file is truncated or corrupt"):
        read_bundle(tmp_path / "b")
    (tmp_path / "b" / "manifest.json").write_text('{"format": "urbanrep-ci')
    with pytest.raises(BundleError, match="manifest.json.*truncated or corrupt"):
        read_bundle(tmp_path / "b")


def test_cli_validate_bad_bundle_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    b = grid_bundle()
    write_bundle(b, tmp_path / "b")
    f = tmp_path / "b" / "regions.parquet"
    f.write_bytes(b"not a parquet file")
    assert main(["-q", "validate", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("urbanrep: error: cannot read") and "regions.parquet" in err[0]
    assert "Traceback" not in capsys.readouterr().err


def test_cli_validate_good_bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_bundle(grid_bundle(), tmp_path / "b")
    assert main(["-q", "validate", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("grid: 16 regions, crs=EPSG:32618, modalities=poi,mobility")
