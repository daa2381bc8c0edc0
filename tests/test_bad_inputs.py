"""Bad inputs and faults (issue 15): each ends as one clear error or a counted, reported repair.

Every case asserts the exact outcome: the message, the exit code, and that no user file was
touched. Bundles are tiny synthetic cities (a 2 x 2 grid); training runs two epochs of narrow
experts; CLI calls are in-process (``urbanrep.cli.main``).
"""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import pandas as pd
import pytest

from tests.conftest import grid_bundle
from urbanrep.bundle import read_bundle, write_bundle
from urbanrep.cli import main
from urbanrep.errors import BundleError, UrbanRepError

TINY = ["--set", "train.epochs=2", "--set", "train.num_threads=1", "--set", "model.expert.hidden_channels=8",
        "--set", "model.expert.out_channels=8", "--set", "model.projection_channels=8", "--set", "evaluate.seeds=[0]",
        "--set", "evaluate.folds=2", "--set", "export.report=false", "--set", "export.figures=false"]


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
                     ["evaluate", str(run)], ["export", str(run), *TINY]):
            err = _err(capsys, argv)
            assert f"{run} is in use by another urbanrep process (PID {holder.pid} on here" in err, err
        assert _snapshot(run) == before
    finally:
        holder.kill()
        holder.wait()
    # the holder died: its lock is stale and the next run takes it over
    assert json.loads((run / ".urbanrep.lock").read_text())["pid"] == holder.pid
    assert main(["-q", "run", str(city), "--out", str(run), "--resume", *TINY]) == 0


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


def test_evaluate_json_leaves_the_run_folder_alone(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    city = _bundle(tmp_path)
    run = tmp_path / "run"
    assert main(["-q", "run", str(city), "--out", str(run), *TINY]) == 0
    before = _snapshot(run)
    out = tmp_path / "paper.json"
    assert main(["-q", "evaluate", str(run), "--protocol", "paper", "--json", str(out), *TINY]) == 0
    assert json.loads(out.read_text())["protocol"] == "paper"
    assert _snapshot(run) == before  # metrics.json and predictions.parquet untouched
    mine = tmp_path / "mine.json"
    mine.write_text('{"my": "notes"}')
    err = _err(capsys, ["evaluate", str(run), "--json", str(mine), *TINY])
    assert f"{mine} exists and is not a metrics report urbanrep wrote" in err
    assert mine.read_text() == '{"my": "notes"}'


def test_graph_and_embed_outputs_never_replace_foreign_files(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    city = _bundle(tmp_path)
    graph = tmp_path / "g" / "graph.pt"
    assert main(["-q", "build-graphs", str(city), "--out", str(graph), *TINY]) == 0
    err = _err(capsys, ["build-graphs", str(city), "--out", str(graph), *TINY])
    assert f"{graph} already holds an urbanrep graph; pass --overwrite" in err
    assert main(["-q", "build-graphs", str(city), "--out", str(graph), "--overwrite", *TINY]) == 0
    user = tmp_path / "paper.pt"
    user.write_bytes(b"not a graph")
    err = _err(capsys, ["build-graphs", str(city), "--out", str(user), "--overwrite", *TINY])
    assert f"{user} exists and was not written by urbanrep" in err and user.read_bytes() == b"not a graph"
    # train continues in the folder build-graphs made; embed refuses a foreign folder
    assert main(["-q", "train", str(graph), "--out", str(graph.parent), *TINY]) == 0
    err = _err(capsys, ["train", str(graph), "--out", str(graph.parent), *TINY])
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
