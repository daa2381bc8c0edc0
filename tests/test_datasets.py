"""The embedded default city and dataset-name resolution."""

from __future__ import annotations

import logging
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from urbanrep.bundle import CityBundle, read_bundle, validate_bundle
from urbanrep.cli import main
from urbanrep.datasets import embedded_path, load_dataset
from urbanrep.errors import UrbanRepError

REPO = Path(__file__).resolve().parents[1]


def test_embedded_bundle_is_small_and_valid() -> None:
    path = embedded_path("nyc_manhattan180")
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    assert size <= 2_000_000, f"embedded bundle is {size} bytes"
    bundle, report = validate_bundle(read_bundle(path, validate=False))
    assert len(bundle.regions) == 180
    assert (path / "NOTICE.md").exists()


def _assert_same_bundle(a: CityBundle, b: CityBundle) -> None:
    assert list(a.region_ids) == list(b.region_ids)
    assert a.crs.equals(b.crs)
    assert a.regions.geometry.geom_equals_exact(b.regions.geometry, tolerance=0).all()
    assert set(a.aggregates) == set(b.aggregates)
    for name in a.aggregates:
        da, ma = a.aggregates[name].dense(a.region_ids)
        db, mb = b.aggregates[name].dense(b.region_ids)
        np.testing.assert_array_equal(da, db, err_msg=name)
        np.testing.assert_array_equal(ma, mb)
    pd.testing.assert_frame_equal(a.target_table(), b.target_table())
    pd.testing.assert_frame_equal(a.label_table(), b.label_table())
    assert a.trips is not None and b.trips is not None
    assert a.trips["origin"].geom_equals_exact(b.trips["origin"], tolerance=0).all()
    assert a.trips["destination"].geom_equals_exact(b.trips["destination"], tolerance=0).all()
    np.testing.assert_array_equal(a.trips["time"].to_numpy(), b.trips["time"].to_numpy())


def test_embedded_equals_fresh_prepare(nyc_bundle: CityBundle) -> None:
    _assert_same_bundle(read_bundle(embedded_path("nyc_manhattan180")), nyc_bundle)


def test_resolution_order(tmp_path: Path, nyc_bundle_dir: Path, monkeypatch: pytest.MonkeyPatch,
                          caplog: pytest.LogCaptureFixture) -> None:
    # 1. explicit bundle path
    assert load_dataset(str(nyc_bundle_dir)).name == "nyc_manhattan180"
    # 3. empty data root -> the embedded copy, announced in one log line
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("URBANREP_DATA", str(empty))
    with caplog.at_level(logging.INFO):
        b = load_dataset("nyc_manhattan180")
    assert len(b.regions) == 180
    assert sum("embedded" in r.getMessage() for r in caplog.records) == 1
    # 4. unknown name: one-line error listing the names that resolve
    with pytest.raises(UrbanRepError, match=r"cannot find dataset 'chicago77'.*names that resolve: nyc_manhattan180"):
        load_dataset("chicago77")


def test_cli_unknown_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("URBANREP_DATA", str(tmp_path))
    assert main(["-q", "run", "atlantis", "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot find dataset 'atlantis'" in err[0]


def test_run_help_documents_resolution(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "URBANREP_DATA" in out and "embedded" in out


def test_wheel_contains_package_data(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path)], check=True, capture_output=True, cwd=tmp_path)
    wheel = next(tmp_path.glob("urbanrep-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    expected = {p.relative_to(REPO).as_posix() for p in embedded_path().rglob("*") if p.is_file()}
    assert expected and expected <= set(names), sorted(expected - set(names))
    top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top_level == {"urbanrep"}, top_level  # no bare data_prep (or other) package in site-packages
    assert "urbanrep/converters/nyc_manhattan180.py" in names
    assert "urbanrep/vocabulary/urbanrep-osm-1.json" in names  # the shipped category vocabulary
