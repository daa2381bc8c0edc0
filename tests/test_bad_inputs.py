"""Bad inputs and faults (issue 15): each ends as one clear error or a counted, reported repair.

Every case asserts the exact outcome: the message, the exit code, and that no user file was
touched. Bundles are tiny synthetic cities (a 2 x 2 grid); training runs two epochs of narrow
experts; CLI calls are in-process (``urbanrep.cli.main``).
"""

from __future__ import annotations

import errno
import functools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely
from shapely.geometry import Point, Polygon, box

from tests.conftest import grid_bundle
from urbanrep.bundle import (
    Aggregate,
    CityBundle,
    ValidationReport,
    read_bundle,
    validate_bundle,
    write_bundle,
)
from urbanrep.cli import main
from urbanrep.errors import BundleError, UrbanRepError

TINY = ["--set", "train.epochs=2", "--set", "train.num_threads=1", "--set", "model.expert.hidden_channels=8",
        "--set", "model.expert.out_channels=8", "--set", "model.projection_channels=8", "--set", "evaluate.seeds=[0]",
        "--set", "evaluate.folds=2", "--set", "export.report=false", "--set", "export.figures=false"]


def tiny(*sections: str) -> list[str]:
    """The ``TINY`` settings of ``sections`` only (a stage command warns about the ones it ignores)."""
    pairs = [TINY[i + 1] for i in range(0, len(TINY), 2)]
    return [a for s in pairs if s.split(".", 1)[0] in sections for a in ("--set", s)]


def _bundle(tmp_path: Path, name: str = "city", targets: bool = True) -> Path:
    b = grid_bundle(2)
    if not targets:
        b.targets = None
    write_bundle(b, tmp_path / name)
    return tmp_path / name


def _err(capsys: pytest.CaptureFixture[str], argv: list[str], code: int = 1) -> str:
    """Run the CLI; assert the exit code and a one-line ``urbanrep: error:`` message; return it."""
    capsys.readouterr()
    assert main(["-q", *argv]) == code, argv
    err = capsys.readouterr().err.strip()
    assert err.startswith("urbanrep: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` and its bytes (urbanrep's lock file aside: it records the last holder)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".urbanrep.lock"}


# --- 1. output folders are owned ----------------------------------------------------------------

def test_prepare_refuses_a_folder_with_foreign_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "U"
    out.mkdir()
    (out / "thesis.docx").write_bytes(b"my thesis")
    err = _err(capsys, ["prepare", "chicago77", "--out", str(out)])
    assert f"{out} is not empty and was not written by urbanrep (it holds thesis.docx)" in err
    err = _err(capsys, ["prepare", "chicago77", "--out", str(out), "--overwrite"])  # never a foreign folder
    assert "was not written by urbanrep" in err
    assert _snapshot(out) == {"thesis.docx": b"my thesis"}


def test_write_bundle_owns_its_folder(tmp_path: Path) -> None:
    b = grid_bundle(2)
    user = tmp_path / "U"
    user.mkdir()
    (user / "thesis.docx").write_bytes(b"mine")
    with pytest.raises(UrbanRepError, match=r"not empty and was not written by urbanrep \(it holds thesis.docx\)"):
        write_bundle(b, user)
    assert _snapshot(user) == {"thesis.docx": b"mine"}
    own = tmp_path / "B"
    write_bundle(b, own)
    with pytest.raises(UrbanRepError, match=r"already holds an urbanrep city bundle .*pass --overwrite"):
        write_bundle(b, own)
    write_bundle(b, own, overwrite=True)  # urbanrep's own bundle: replaced on request
    (own / "notes.txt").write_text("mine")
    before = _snapshot(own)
    with pytest.raises(UrbanRepError, match=r"also holds notes.txt, which urbanrep did not write"):
        write_bundle(b, own, overwrite=True)
    assert _snapshot(own) == before
    empty = tmp_path / "E"
    empty.mkdir()
    write_bundle(b, empty)  # an empty folder is fine
    assert read_bundle(empty).name == "grid"


def test_run_refuses_foreign_files_anywhere_in_the_run_folder(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    city = _bundle(tmp_path)
    run = tmp_path / "V"
    assert main(["-q", "run", str(city), "--out", str(run), *TINY]) == 0
    assert (run / ".urbanrep").is_file()
    (run / "bundle" / "thesis.docx").write_bytes(b"my thesis")
    before = _snapshot(run)
    for flags in ([], ["--overwrite"], ["--resume"]):
        err = _err(capsys, ["run", str(city), "--out", str(run), *flags, *TINY])
        assert f"{run} is an urbanrep run folder but also holds bundle/thesis.docx, which urbanrep did not write" in err
    assert _snapshot(run) == before
    foreign = tmp_path / "W"
    foreign.mkdir()
    (foreign / "data.csv").write_text("a,b\n")
    err = _err(capsys, ["run", str(city), "--out", str(foreign), *TINY])
    assert "is not empty and was not written by urbanrep (it holds data.csv)" in err
    assert _snapshot(foreign) == {"data.csv": b"a,b\n"}


def test_rerun_needs_overwrite_or_resume_and_never_shows_stale_metrics(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    city = _bundle(tmp_path)
    bare = _bundle(tmp_path, "bare", targets=False)
    run = tmp_path / "run"
    assert main(["-q", "run", str(city), "--out", str(run), *TINY]) == 0
    assert (run / "metrics.json").exists() and (run / "predictions.parquet").exists()
    err = _err(capsys, ["run", str(city), "--out", str(run), *TINY])
    assert f"{run} already holds an urbanrep run folder" in err and "--overwrite" in err and "--resume" in err
    # rerun with a bundle without targets: the earlier run's metrics must not survive
    assert main(["-q", "run", str(bare), "--out", str(run), "--overwrite", *TINY]) == 0
    assert not (run / "metrics.json").exists() and not (run / "predictions.parquet").exists()
    assert main(["-q", "run", str(city), "--out", str(run), "--overwrite", *TINY]) == 0
    assert (run / "metrics.json").exists()
    assert main(["-q", "run", str(bare), "--out", str(run), "--resume", *TINY]) == 0
    assert not (run / "metrics.json").exists() and not (run / "predictions.parquet").exists()
    assert "no targets" in json.loads((run / "run.json").read_text())["skipped"]["evaluate"]


_HOLD_LOCK = """
import fcntl, json, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.ftruncate(fd, 0)
os.write(fd, json.dumps({"pid": os.getpid(), "host": "here", "since": "now"}).encode())
print("locked", flush=True)
time.sleep(60)
"""


@pytest.mark.skipif(sys.platform == "win32", reason="flock")
def test_second_run_into_a_locked_folder_fails_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    city = _bundle(tmp_path)
    run = tmp_path / "run"
    assert main(["-q", "run", str(city), "--out", str(run), *TINY]) == 0
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(run / ".urbanrep.lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        before = _snapshot(run)
        for argv in (["run", str(city), "--out", str(run), "--overwrite", *TINY],
                     ["run", str(city), "--out", str(run), "--resume", *TINY],
                     ["evaluate", str(run)], ["export", str(run), *tiny("export")]):
            err = _err(capsys, argv)
            assert f"{run} is in use by another urbanrep process (PID {holder.pid} on here" in err, err
        assert _snapshot(run) == before
    finally:
        holder.kill()
        holder.wait()
    # the holder died: its lock is stale and the next run takes it over
    assert json.loads((run / ".urbanrep.lock").read_text())["pid"] == holder.pid
    assert main(["-q", "run", str(city), "--out", str(run), "--resume", *TINY]) == 0


@pytest.mark.slow  # two fresh interpreters importing torch: ~45 s on a busy 2-core machine
def test_two_concurrent_runs_into_one_folder_cannot_both_succeed(tmp_path: Path) -> None:
    """Two real ``urbanrep run`` processes started together on one --out: one runs, the other refuses.

    The fast lock test above holds the lock from a stand-in process; this one races two real runs.
    """
    city = _bundle(tmp_path)
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "urbanrep", "-q", "run", str(city), "--out", str(run), *TINY]
    procs = [subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read() if p.stderr else "") for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 1], results
    err = next(text for code, text in results if code == 1).strip().splitlines()[-1]
    assert err.startswith(f"urbanrep: error: {run} ")
    assert "is in use by another urbanrep process (PID" in err or "already holds an urbanrep run folder" in err, err
    assert len(pd.read_parquet(run / "embeddings.parquet")) == 4 and (run / "metrics.json").exists()


def test_stale_temporaries_are_removed_and_foreign_ones_kept(tmp_path: Path) -> None:
    city = _bundle(tmp_path)
    run = tmp_path / "run"
    assert main(["-q", "run", str(city), "--out", str(run), *TINY]) == 0
    killed = run / "gis" / ".embeddings.geojson.x1y2.tmp"  # left by an export killed mid-write
    killed.mkdir()
    (killed / "embeddings.geojson").write_text("{")
    (run / ".model.pt.abc.tmp").mkdir()
    assert main(["-q", "run", str(city), "--out", str(run), "--resume", *TINY]) == 0
    assert not killed.exists() and not (run / ".model.pt.abc.tmp").exists()
    gis = tmp_path / "gis"  # an export folder of its own
    assert main(["-q", "export", str(run), "--out", str(gis), *tiny("export")]) == 0
    (gis / ".embeddings.gpkg.q7.tmp").mkdir()
    assert main(["-q", "export", str(run), "--out", str(gis), "--formats", "parquet", *tiny("export")]) == 0
    assert sorted(p.name for p in gis.iterdir()) == [".urbanrep", "embeddings.parquet", "fusion_weights.parquet",
                                                     "predictions.parquet"]  # stale formats and temporaries gone
    (gis / "notes.txt").write_text("mine")
    assert main(["-q", "export", str(run), "--out", str(gis), *tiny("export")]) == 1
    assert (gis / "notes.txt").read_text() == "mine"


def test_evaluate_json_leaves_the_run_folder_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    city = _bundle(tmp_path)
    run = tmp_path / "run"
    assert main(["-q", "run", str(city), "--out", str(run), *TINY]) == 0
    before = _snapshot(run)
    out = tmp_path / "paper.json"
    assert main(["-q", "evaluate", str(run), "--protocol", "paper", "--json", str(out), *tiny("evaluate")]) == 0
    assert json.loads(out.read_text())["protocol"] == "paper"
    assert _snapshot(run) == before  # metrics.json and predictions.parquet untouched
    mine = tmp_path / "mine.json"
    mine.write_text('{"my": "notes"}')
    err = _err(capsys, ["evaluate", str(run), "--json", str(mine), *tiny("evaluate")])
    assert f"{mine} exists and is not a metrics report urbanrep wrote" in err
    assert mine.read_text() == '{"my": "notes"}'


def test_graph_and_embed_outputs_never_replace_foreign_files(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    city = _bundle(tmp_path)
    graph = tmp_path / "g" / "graph.pt"
    assert main(["-q", "build-graphs", str(city), "--out", str(graph), *tiny("graph")]) == 0
    err = _err(capsys, ["build-graphs", str(city), "--out", str(graph), *tiny("graph")])
    assert f"{graph} already holds an urbanrep graph; pass --overwrite" in err
    assert main(["-q", "build-graphs", str(city), "--out", str(graph), "--overwrite", *tiny("graph")]) == 0
    user = tmp_path / "paper.pt"
    user.write_bytes(b"not a graph")
    err = _err(capsys, ["build-graphs", str(city), "--out", str(user), "--overwrite", *tiny("graph")])
    assert f"{user} exists and was not written by urbanrep" in err and user.read_bytes() == b"not a graph"
    # train continues in the folder build-graphs made; embed refuses a foreign folder
    assert main(["-q", "train", str(graph), "--out", str(graph.parent), *tiny("model", "train")]) == 0
    err = _err(capsys, ["train", str(graph), "--out", str(graph.parent), *tiny("model", "train")])
    assert "already holds an urbanrep run (config.json" in err
    emb = tmp_path / "E"
    emb.mkdir()
    (emb / "keep.txt").write_text("x")
    err = _err(capsys, ["embed", str(graph.parent), str(city), "--out", str(emb)])
    assert "not written by urbanrep (it holds keep.txt)" in err


# --- 2. bundles are confined ------------------------------------------------------------------

@pytest.mark.parametrize("target", ["../../elsewhere/targets.parquet", "../../../../etc/passwd", "/etc/passwd"])
def test_manifest_paths_must_stay_inside_the_bundle(tmp_path: Path, target: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    city = tmp_path / "a" / "b" / "city"
    city.parent.mkdir(parents=True)
    write_bundle(grid_bundle(2), city)
    elsewhere = tmp_path / "a" / "elsewhere"
    elsewhere.mkdir()
    (city / "targets.parquet").rename(elsewhere / "targets.parquet")
    manifest = json.loads((city / "manifest.json").read_text())
    manifest["layers"]["targets"]["file"] = target
    (city / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=rf"entry 'layers.targets' points to '{target}', outside the bundle folder"):
        read_bundle(city)
    err = _err(capsys, ["validate", str(city)])
    assert "outside the bundle folder" in err


def test_plain_parquet_without_crs_is_named_as_such(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    city = _bundle(tmp_path)
    regions = gpd.read_parquet(city / "regions.parquet")
    pd.DataFrame({"region_id": regions["region_id"], "wkt": regions.geometry.to_wkt()}).to_parquet(
        city / "regions.parquet")
    err = _err(capsys, ["validate", str(city)])
    assert "regions.parquet is a plain Parquet file without GeoParquet metadata, so its geometry and CRS are " \
           "unknown (columns: region_id, wkt)" in err
    assert "truncated or corrupt" not in err


# --- 4. every failure is one line -----------------------------------------------------------------

def test_unknown_names_and_missing_run_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _err(capsys, ["prepare", "chicgo77", "--out", str(tmp_path / "x")])
    assert "unknown dataset 'chicgo77'; converters exist for: " in err and "chicago77" in err
    assert not (tmp_path / "x").exists()
    err = _err(capsys, ["evaluate", str(tmp_path / "no_such_run")])
    assert err == f"urbanrep: error: run folder {tmp_path / 'no_such_run'} does not exist; pass a folder written " \
                  "by 'urbanrep run' or 'urbanrep train'"
    for cmd in ("export", "embed"):
        argv = [cmd, str(tmp_path / "no_such_run")] + (["city", "--out", str(tmp_path / "e")] if cmd == "embed" else [])
        assert "does not exist" in _err(capsys, argv)


def test_disk_full_is_one_line_and_leaves_nothing_half_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    city = _bundle(tmp_path)

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "regions.parquet")

    monkeypatch.setattr(gpd.GeoDataFrame, "to_parquet", full)
    run = tmp_path / "run"
    err = _err(capsys, ["run", str(city), "--out", str(run), *TINY])
    assert err.startswith("urbanrep: error: no space left on the device (regions.parquet); free some space")
    assert sorted(p.name for p in run.iterdir()) == [".urbanrep", ".urbanrep.lock"]  # no partial bundle


def test_out_of_memory_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    city = _bundle(tmp_path)
    run = tmp_path / "run"
    err = _err(capsys, ["run", str(city), "--out", str(run), *TINY, "--set", "model.expert.hidden_channels=10000000"])
    assert "model.expert.hidden_channels=10000000 needs at least" in err and "GiB" in err
    assert not run.exists()  # refused before any stage ran

    import urbanrep.model

    def no_memory(*args: object, **kwargs: object) -> None:
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 4000000000000 bytes.")

    monkeypatch.setattr(urbanrep.model, "train", no_memory)
    err = _err(capsys, ["run", str(city), "--out", str(run), *TINY])
    assert err.startswith("urbanrep: error: out of memory ([enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator")
    assert "--set train.mode=minibatch" in err


def test_nan_learning_rate_is_refused_before_any_stage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    city = _bundle(tmp_path)
    for name, text in (("c.yaml", "train:\n  lr: .nan\n"), ("c.json", '{"train": {"lr": NaN}}')):
        cfg = tmp_path / name
        cfg.write_text(text)
        err = _err(capsys, ["run", str(city), "--out", str(tmp_path / "run"), "--config", str(cfg)])
        assert err == "urbanrep: error: train.lr=nan is not a finite number; give a finite value, e.g. " \
                      "--set train.lr=0.001"
    err = _err(capsys, ["run", str(city), "--out", str(tmp_path / "run"), "--set", "train.lr=nan"])
    assert "train.lr: expected a number, got 'nan'" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("n", [1, 2])
def test_one_and_two_region_cities_run_end_to_end(tmp_path: Path, n: int) -> None:
    b = grid_bundle(2)
    keep = list(b.region_ids[:n])
    b.regions = b.regions[b.regions["region_id"].isin(keep)]
    od = b.aggregates["od"].table
    b.aggregates["od"].table = od[od["origin_region"].isin(keep) & od["dest_region"].isin(keep)]
    b.targets = b.targets[b.targets["region_id"].isin(keep)]
    write_bundle(b, tmp_path / "small")
    run = tmp_path / "run"
    argv = TINY[:-4]  # figures and the report too
    assert not any(a.startswith("export.") for a in argv)
    assert main(["-q", "run", str(tmp_path / "small"), "--out", str(run), *argv]) == 0
    assert len(pd.read_parquet(run / "embeddings.parquet")) == n
    assert (run / "gis" / "embeddings.parquet").exists()
    metrics = json.loads((run / "metrics.json").read_text())
    assert "population" in metrics["skipped"]  # too few regions to evaluate: said, not a traceback


# --- 3. one validation, everywhere ------------------------------------------------------------------

def _write_unchecked(bundle: CityBundle, path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Write ``bundle`` to disk as it is (a bad bundle made by hand or by another tool)."""
    import urbanrep.bundle.io as bio

    with monkeypatch.context() as m:
        m.setattr(bio, "validate_bundle", lambda b, **kw: (b, ValidationReport()))
        write_bundle(bundle, path)
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest["validation"]["regions_sha256"]  # not validated by urbanrep: nothing to trust
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


@functools.lru_cache(maxsize=1)
def _fitted() -> Any:
    """A tiny model fitted once on the good 2 x 2 grid (for transform on bad bundles)."""
    from urbanrep import UrbanRep
    from urbanrep.runconfig import load_run_config

    return UrbanRep(load_run_config(None, [s for s in TINY if s != "--set"])).fit(grid_bundle(2))


def _same_error_everywhere(bundle: CityBundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture[str]) -> str:
    """validate, write_bundle, read_bundle, build-graphs and UrbanRep.fit/transform: one check, one message."""
    from urbanrep import UrbanRep
    from urbanrep.graphs import build_graph
    from urbanrep.runconfig import load_run_config

    messages = []
    with pytest.raises(BundleError) as exc:
        validate_bundle(bundle)
    messages.append(str(exc.value))
    with pytest.raises(BundleError) as exc:
        write_bundle(bundle, tmp_path / "refused")
    messages.append(str(exc.value))
    assert not (tmp_path / "refused").exists()
    with pytest.raises(BundleError) as exc:
        build_graph(bundle)
    messages.append(str(exc.value))
    config = load_run_config(None, [s for s in TINY if s != "--set"])
    with pytest.raises(BundleError) as exc:
        UrbanRep(config).fit(bundle)
    messages.append(str(exc.value))
    with pytest.raises(BundleError) as exc:
        _fitted().transform(bundle)
    messages.append(str(exc.value))
    on_disk = _write_unchecked(bundle, tmp_path / "bad", monkeypatch)
    with pytest.raises(BundleError) as exc:
        read_bundle(on_disk)
    messages.append(str(exc.value))
    assert len(set(messages)) == 1, messages
    for argv in (["validate", str(on_disk)], ["build-graphs", str(on_disk), "--out", str(tmp_path / "g.pt")],
                 ["run", str(on_disk), "--out", str(tmp_path / "run"), *TINY]):
        assert _err(capsys, argv) == f"urbanrep: error: {messages[0]}"
    assert not (tmp_path / "g.pt").exists() and not (tmp_path / "run").exists()  # refused before any work
    return messages[0]


def test_partitioned_point_layer_in_the_wrong_crs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A point layer kept on disk (x/y columns) is checked from its Parquet footer, never loaded."""
    b = grid_bundle(2)
    city = tmp_path / "city"
    write_bundle(CityBundle(name="grid", regions=b.regions), city)
    xy = b.pois.geometry.get_coordinates()
    pd.DataFrame({"x": xy["x"], "y": xy["y"], "category": b.pois["category"]}).to_parquet(city / "pois.parquet")
    manifest = json.loads((city / "manifest.json").read_text())
    manifest["layers"]["pois"] = {"file": "pois.parquet", "records": len(xy), "crs": "EPSG:4326"}  # metres, really
    (city / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"layer 'pois': coordinates \(x .*\) are not degrees, but the layer is "
                                          r"labelled EPSG:4326"):
        read_bundle(city)
    assert "are not degrees" in _err(capsys, ["validate", str(city)])


def _nyc_grid(crs: str = "EPSG:4326", swap: bool = False, x0: float = -74.01, y0: float = 40.70) -> CityBundle:
    """A 2 x 2 grid of ~1 km cells (default: lower Manhattan), in lon/lat, with POIs."""
    d = 0.01
    cells = [box(x0 + i * d, y0 + j * d, x0 + (i + 1) * d, y0 + (j + 1) * d) for j in range(2) for i in range(2)]
    rng = np.random.default_rng(0)
    lon, lat = rng.uniform(x0, x0 + 2 * d, 40), rng.uniform(y0, y0 + 2 * d, 40)
    regions = gpd.GeoDataFrame({"region_id": ["a", "b", "c", "d"]}, geometry=cells, crs=crs)
    pts = gpd.points_from_xy(lat, lon) if swap else gpd.points_from_xy(lon, lat)
    pois = gpd.GeoDataFrame({"category": rng.choice(["food", "shop"], 40)}, geometry=pts, crs=crs)
    return CityBundle(name="nyc_grid", regions=regions, pois=pois)


def test_metre_coordinates_labelled_wgs84(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    b = _nyc_grid().regions.to_crs("EPSG:32618").set_crs("EPSG:4326", allow_override=True)
    bundle = CityBundle(name="m", regions=b)
    msg = _same_error_everywhere(bundle, tmp_path, monkeypatch, capsys)
    assert msg.startswith("layer 'regions': coordinates (x 583") and "are not degrees, but the layer is labelled " \
        "EPSG:4326 (WGS 84); they look like metres or feet of a projected CRS" in msg


def test_degrees_labelled_with_a_metric_crs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    bundle = _nyc_grid("EPSG:3857")
    msg = _same_error_everywhere(bundle, tmp_path, monkeypatch, capsys)
    assert msg == ("layer 'regions' is labelled EPSG:3857 (WGS 84 / Pseudo-Mercator) (metre) but its coordinates "
                   "(x -74.01..-73.99, y 40.7..40.72) look like longitude/latitude degrees: the whole layer would span "
                   "0.02 metre; label it as degrees: gdf.set_crs('EPSG:4326', allow_override=True)")


def test_coordinates_outside_the_crs_area_of_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    regions = _nyc_grid().regions.to_crs("EPSG:32618").set_crs("EPSG:2263", allow_override=True)  # UTM as NY feet
    msg = _same_error_everywhere(CityBundle(name="m", regions=regions), tmp_path, monkeypatch, capsys)
    assert "far outside the area where EPSG:2263 (NAD83 / New York Long Island (ftUS)) is used" in msg
    assert "the CRS label is wrong" in msg


def test_swapped_latitude_longitude(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    msg = _same_error_everywhere(_nyc_grid(swap=True), tmp_path, monkeypatch, capsys)
    assert msg.startswith("layer 'pois': every coordinate (x 40.7") and "lies south of 60°S (Antarctica)" in msg
    paris = _nyc_grid(swap=True, x0=2.33, y0=48.84)  # swapped, Paris lands in east Africa: a plausible place
    msg = _same_error_everywhere(paris, tmp_path / "paris", monkeypatch, capsys)
    assert msg == ("layer 'pois': 100 % of its points fall outside the regions, but with x and y swapped they fall "
                   "inside: its coordinates are in (latitude, longitude) order; GeoPandas wants x = longitude, "
                   "y = latitude: build the points with gpd.points_from_xy(lon, lat)")
    swapped_regions = _nyc_grid().regions
    swapped_regions.geometry = shapely.transform(swapped_regions.geometry.values, lambda xy: xy[:, ::-1])
    with pytest.raises(BundleError, match=r"south of 60°S \(Antarctica\).*\(latitude, longitude\) order"):
        validate_bundle(CityBundle(name="s", regions=swapped_regions))
    with pytest.raises(BundleError, match=r"latitudes beyond ±90 .* \(latitude, longitude\) order"):
        validate_bundle(CityBundle(name="s", regions=swapped_regions.set_geometry(
            swapped_regions.geometry.translate(xoff=0, yoff=-30))))


def test_overlapping_regions_refused_above_tolerance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    b = grid_bundle(2)
    geoms = list(b.regions.geometry)
    geoms[1] = box(500, 0, 2000, 1000)  # r1 covers half of r0
    b.regions = b.regions.set_geometry(gpd.GeoSeries(geoms, crs=b.regions.crs))
    msg = _same_error_everywhere(b, tmp_path, monkeypatch, capsys)
    assert msg == ("regions layer: regions overlap: 'r0' and 'r1' by 500000 m² (50.0 % of the smaller); regions must "
                   "not overlap by more than 1 % (a point in the overlap would count for one of them only): fix the "
                   "polygons, e.g. clip or dissolve them")
    good = tmp_path / "good"
    write_bundle(grid_bundle(2), good)  # the manifest trusts regions.parquet only byte for byte
    b.regions.to_parquet(good / "regions.parquet")
    with pytest.raises(BundleError, match="regions overlap: 'r0' and 'r1' by 500000 m²"):
        read_bundle(good)


def test_slightly_overlapping_regions_are_cut_and_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from urbanrep.graphs import build_graph

    b = grid_bundle(2)
    geoms = list(b.regions.geometry)
    geoms[1] = box(995, 0, 2000, 1000)  # 5 m x 1000 m sliver over r0 (0.5 %)
    b.regions = b.regions.set_geometry(gpd.GeoSeries(geoms, crs=b.regions.crs))
    b.pois = gpd.GeoDataFrame({"category": ["food"]}, geometry=[Point(997, 500)], crs=b.regions.crs)
    fixed, report = validate_bundle(b)
    assert report.overlaps["pairs"] == 1 and report.overlaps["area_m2"] == pytest.approx(5000)
    assert ("regions: 1 pair(s) of regions overlapped by 5000 m² in all (below the 1 % tolerance; largest: 'r0' and "
            "'r1', 5000 m² (0.5 % of the smaller)); each overlap was cut from the later region of the pair") \
        in report.lines()[0]
    assert fixed.regions.geometry.area.tolist() == pytest.approx([1e6, 1e6, 1e6, 1e6])  # r1 lost the sliver
    write_bundle(b, tmp_path / "cut")  # the cut regions are written; reading them back finds no overlap
    again = read_bundle(tmp_path / "cut", validate=False)
    assert validate_bundle(again)[1].overlaps == {}
    capsys.readouterr()
    assert main(["-q", "validate", str(tmp_path / "cut")]) == 0  # the repair made at writing is still reported
    assert "  note (when written): regions: 1 pair(s) of regions overlapped by 5000 m²" in capsys.readouterr().out
    data, _ = build_graph(b)
    x = data["region"]["x_poi"].numpy()
    assert x[:, -1].tolist() == pytest.approx([np.log1p(1), 0, 0, 0])  # the POI counts for r0 only


def test_invalid_polygons_are_repaired_with_the_area_change_reported() -> None:
    b = grid_bundle(2)
    geoms = list(b.regions.geometry)
    geoms[3] = Polygon([(1000, 1000), (2000, 2000), (2000, 1000), (1000, 2000)])  # bow-tie
    b.regions = b.regions.set_geometry(gpd.GeoSeries(geoms, crs=b.regions.crs))
    fixed, report = validate_bundle(b)
    assert report.repaired_geometries == {"regions": 1}
    assert report.repaired_area["regions"]["after"] == pytest.approx(500_000)
    line = next(x for x in report.lines() if x.startswith("repaired"))
    assert line == ("repaired 1 invalid geometries in regions (make_valid): their area changed from 0 to 500000 "
                    "(+100.0 %), most for region 'r3' (0 -> 500000)")
    assert fixed.regions.geometry.iloc[3].is_valid


def test_duplicate_od_pairs_are_summed_and_counted() -> None:
    from tests.helpers import assert_same_graph
    from urbanrep.graphs import build_graph

    b = grid_bundle(2)
    od = b.aggregates["od"].table
    doubled = pd.concat([od, od.iloc[:2].assign(value=[10.0, 20.0])], ignore_index=True)
    b.aggregates["od"] = Aggregate("od", "mobility", "matrix", doubled)
    fixed, report = validate_bundle(b)
    assert report.summed_duplicates == {"od": 2}
    assert "aggregate 'od': 2 duplicate (origin_region, dest_region[, slice]) rows were summed into one row per pair" \
        in report.lines()
    summed = fixed.aggregates["od"].table
    assert len(summed) == len(od) and summed["value"].tolist()[:2] == [11.0, 22.0]
    ref = grid_bundle(2)
    ref.aggregates["od"] = Aggregate("od", "mobility", "matrix", summed)
    assert_same_graph(build_graph(b)[0], build_graph(ref)[0])


@pytest.mark.parametrize("case", ["poi_aggregate", "od_value", "trip_count"])
def test_negative_counts(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                         capsys: pytest.CaptureFixture[str]) -> None:
    b = grid_bundle(2)
    if case == "poi_aggregate":
        b.aggregates["poi_counts"] = Aggregate("poi_counts", "poi", "vector", pd.DataFrame(
            {"region_id": ["r0", "r1"], "food": [3.0, -1.0]}))
        expected = ("POI aggregate(s) ['poi_counts'] has negative values in rows [1]: it must hold counts, areas or "
                    "shares (>= 0); fix the aggregate or drop it from the bundle")
    elif case == "od_value":
        b.aggregates["od"].table.loc[0, "value"] = -2.0
        expected = ("aggregate 'od': mobility flows have negative counts at rows 0; trip 'count' and OD 'value' must "
                    "be >= 0")
    else:
        b.trips = pd.DataFrame({"origin_region": ["r0", "r1"], "dest_region": ["r1", "r2"], "count": [1, -3]})
        expected = "layer 'trips': mobility flows have negative counts at rows 1; trip 'count' and OD 'value' must be >= 0"
    assert _same_error_everywhere(b, tmp_path, monkeypatch, capsys) == expected


def test_missing_categories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    b = grid_bundle(2)
    b.pois = b.pois.assign(category=None)
    msg = _same_error_everywhere(b, tmp_path, monkeypatch, capsys)
    assert msg == "layer 'pois' column 'category': every value is missing; the layer needs category values"
    some = grid_bundle(2)
    some.pois.loc[:4, "category"] = None
    _, report = validate_bundle(some)
    assert report.no_category == {"pois": 5}
    assert "5 records of pois have no category (the graph build drops them)" in report.lines()
    from urbanrep.graphs import build_graph

    assert build_graph(some)[1]["poi"]["no_category"] == 5  # the same count in the build report


def test_unparseable_times(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    b = grid_bundle(2)
    b.trips = pd.DataFrame({"origin_region": ["r0", "r1", "r2"], "dest_region": ["r1", "r2", "r3"],
                            "time": ["2016-05-01 08:30:00", "yesterday", None]})
    _, report = validate_bundle(b)
    assert report.unparseable_times == 1
    assert "1 trips have a time that cannot be parsed (counted in the totals, not in any time slice)" in report.lines()
    b.trips["time"] = ["soon", "later", None]
    msg = _same_error_everywhere(b, tmp_path, monkeypatch, capsys)
    assert msg == ("layer 'trips' column 'time': no value can be read as a time (e.g. 'soon' at row 0); give ISO 8601 "
                   "times such as '2016-05-01 08:30:00' or datetime values")


def test_string_and_integer_region_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    b = grid_bundle(2)
    b.regions["region_id"] = [0, 1, 2, 3]
    b.aggregates["od"].table[["origin_region", "dest_region"]] = [[0, 1], [1, 2], [2, 3]]
    b.targets["region_id"] = ["0", "1", "2", "3"]
    msg = _same_error_everywhere(b, tmp_path, monkeypatch, capsys)
    assert msg == ("targets: region_id values are str ('0', '1', '2') but the regions layer's region_id values are int "
                   "(0, 1, 2); they match only as text: convert them, df['region_id'] = df['region_id'].astype(int)")


def test_mixed_type_region_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    b = grid_bundle(2)
    b.regions["region_id"] = pd.Series([0, "r1", "r2", "r3"], dtype=object)
    b.aggregates = {}
    b.targets = None
    with pytest.raises(BundleError) as exc:
        write_bundle(b, tmp_path / "mixed")
    assert str(exc.value) == ("regions layer: column 'region_id' mixes value types: int (e.g. 0), str (e.g. 'r1'); use "
                              "one type, e.g. df['region_id'] = df['region_id'].astype(str)")
    assert not (tmp_path / "mixed").exists()


@pytest.mark.parametrize("case", ["no_region_id", "no_category"])
def test_fit_on_a_bundle_with_mistakes_names_the_fix(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    b = grid_bundle(2)
    if case == "no_region_id":
        b.regions = b.regions.rename(columns={"region_id": "zone"})
        b.aggregates, b.targets = {}, None
        expected = "regions layer has no 'region_id' column (columns: zone, geometry); add one with a unique id per region"
    else:
        b.pois = b.pois.rename(columns={"category": "fclass"})
        expected = "layer 'pois' lacks required columns ['category'] (has: fclass, geometry)"
    assert _same_error_everywhere(b, tmp_path, monkeypatch, capsys) == expected
