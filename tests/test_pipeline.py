"""The CLI stages and the Python API end to end, on the embedded NYC-180 and a small real-format city.

Training budgets are tiny (a few epochs, narrow experts): these tests check that every stage runs,
writes what it promises and reports user mistakes in one line, not the embedding's quality.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
from shapely.geometry import box

from tests.conftest import grid_bundle
from urbanrep.cli import main
from urbanrep.position import position_count
from urbanrep.runconfig import RunConfig, load_run_config
from urbanrep.smoothing import scale_width

TINY = ["--set", "train.epochs=3", "--set", "train.num_threads=1", "--set", "model.ensemble=1",
        "--set", "model.expert.hidden_channels=16", "--set",
        "model.expert.out_channels=16", "--set", "model.projection_channels=16", "--set", "evaluate.seeds=[0]",
        "--set", "export.report=false", "--set", "export.figures=false"]
REPO = Path(__file__).resolve().parents[1]


def tiny_config(**train: object) -> RunConfig:
    sets = [s for s in TINY if s != "--set"] + [f"train.{k}={v}" for k, v in train.items()]
    return load_run_config(None, sets)


@pytest.fixture(scope="module")
def nyc_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One full ``urbanrep run`` on the embedded default city, shared by the checks below."""
    out = tmp_path_factory.mktemp("runs") / "nyc"
    assert main(["-q", "run", "nyc_manhattan180", "--out", str(out), *TINY]) == 0
    return out


def test_run_writes_every_stage(nyc_run: Path) -> None:
    for name in ("bundle/manifest.json", "graph.pt", "graph.json", "config.json", "loss.csv", "model.pt",
                 "embeddings.parquet", "fusion_weights.parquet", "metrics.json", "predictions.parquet",
                 "gis/embeddings.parquet", "gis/regions.gpkg", "gis/embeddings.geojson", "run.json"):
        assert (nyc_run / name).exists(), name
    emb = pd.read_parquet(nyc_run / "embeddings.parquet")
    # region_id, 16 columns, two scales, positions, volumes of poi, mobility, landuse, their count columns
    # (27 POI and 1 land-use column; mobility's 65 as shares of the region's trips, round 2026-12-07ac)
    assert len(emb) == 180 and emb["region_id"].is_unique
    assert emb.shape[1] == 1 + 16 * 3 + position_count(180, 8) + 2 * 3 + 28 + 65
    assert np.isfinite(emb.drop(columns="region_id").to_numpy()).all()
    metrics = json.loads((nyc_run / "metrics.json").read_text())
    assert set(metrics["tasks"]) == {"crime", "check_in", "service_call", "carbon", "income"}
    assert metrics["clustering"]["label"] == "community_district"
    # the model's own inputs, scored the same way
    assert list(metrics["inputs"]) == ["poi", "mobility", "landuse", "remote_sensing"]
    assert set(metrics["inputs"]["poi"]["tasks"]) == set(metrics["tasks"])
    assert 0.0 <= metrics["inputs"]["mobility"]["clustering"]["nmi"] <= 1.0
    from urbanrep.export.report import _metrics_html, _tables_html

    assert "Against the model's own inputs" in _metrics_html(metrics)
    assert "What the embedding's columns hold" in _tables_html(nyc_run, None)
    summary = json.loads((nyc_run / "run.json").read_text())
    assert set(summary["stages_s"]) == {"bundle", "graph", "train", "evaluate", "export"}
    config = json.loads((nyc_run / "config.json").read_text())
    assert config["train"]["epochs"] == 3 and config["model"]["expert"]["hidden_channels"] == 16


def test_stage_commands_match_the_run(nyc_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    graph = tmp_path / "g.pt"
    assert main(["-q", "build-graphs", str(nyc_run / "bundle"), "--out", str(graph), *TINY]) == 0
    assert graph.exists() and (tmp_path / "g.json").exists()
    train_dir = tmp_path / "train"
    assert main(["-q", "train", str(graph), "--out", str(train_dir), *TINY]) == 0
    # same graph, config and seed -> the same embedding as the full run
    a = pd.read_parquet(nyc_run / "embeddings.parquet")
    b = pd.read_parquet(train_dir / "embeddings.parquet")
    pd.testing.assert_frame_equal(a, b)
    # embed: a trained model applied to a bundle reproduces the training embedding
    emb_dir = tmp_path / "embed"
    assert main(["-q", "embed", str(train_dir), str(nyc_run / "bundle"), "--out", str(emb_dir)]) == 0
    c = pd.read_parquet(emb_dir / "embeddings.parquet")
    np.testing.assert_allclose(c.drop(columns="region_id").to_numpy(), a.drop(columns="region_id").to_numpy(),
                               atol=1e-5)
    capsys.readouterr()
    # evaluate with the paper protocol, bundle given explicitly
    out_json = tmp_path / "paper.json"
    assert main(["-q", "evaluate", str(train_dir), "--bundle", str(nyc_run / "bundle"), "--protocol", "paper",
                 "--json", str(out_json)]) == 0
    rep = json.loads(out_json.read_text())
    assert rep["protocol"] == "paper" and "check_in" in rep["tasks"]
    assert "no graph.pt" in rep["skipped"]["inputs"] and "inputs" not in rep  # a train folder of a graph file
    assert "paper protocol" in capsys.readouterr().out
    assert main(["-q", "evaluate", str(nyc_run), "--json", str(tmp_path / "run.json")]) == 0
    printed = capsys.readouterr().out
    assert "the model's own inputs, one modality at a time" in printed and "remote_sensing" in printed
    assert main(["-q", "evaluate", str(nyc_run), "--json", str(tmp_path / "off.json"),
                 "--set", "evaluate.inputs=false", "--set", "model.output_volumes=false"]) == 0
    assert "inputs" not in json.loads((tmp_path / "off.json").read_text())
    err = capsys.readouterr().err  # a setting the command does not read is named, not dropped silently
    assert "'urbanrep evaluate' reads only the evaluate settings; ignored: --set model.output_volumes=false" in err
    # export into a chosen folder, two formats
    gis = tmp_path / "gis"
    assert main(["-q", "export", str(train_dir), "--bundle", str(nyc_run / "bundle"), "--out", str(gis),
                 "--formats", "parquet,geojson", "--set", "export.report=false", "--set", "export.figures=false"]) == 0
    back = gpd.read_parquet(gis / "embeddings.parquet")
    assert len(back) == 180 and back.crs is not None
    assert gpd.read_file(gis / "embeddings.geojson").crs.to_epsg() == 4326


def test_embed_changes_only_the_written_embedding(nyc_run: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """``embed --set`` applies written-embedding settings to the run's own model and refuses the rest."""
    from urbanrep.bundle import read_bundle
    from urbanrep.model import UrbanRep

    full = pd.read_parquet(nyc_run / "embeddings.parquet").set_index("region_id")
    out = tmp_path / "no_volumes"
    assert main(["-q", "embed", str(nyc_run), str(nyc_run / "bundle"), "--out", str(out),
                 "--set", "model.output_volumes=false", "--set", "train.device=cpu"]) == 0
    bare = pd.read_parquet(out / "embeddings.parquet").set_index("region_id")
    assert bare.shape[1] == full.shape[1] - 6  # POIs, trips, land use: log and linear totals
    # each file says what its columns hold (Parquet metadata), and `info` prints it
    held = [c["holds"] for c in full.attrs["urbanrep_columns"]]
    assert held[-1] == "count: landuse total, sqrt scale" and "volume: landuse total, linear scale" in held
    assert not any(h.startswith("volume") for h in (c["holds"] for c in bare.attrs["urbanrep_columns"]))
    assert full.attrs["urbanrep_columns"][-1]["last"] == full.columns[-1]
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "emb_000 … " in printed and " position: low-frequency Laplacian eigenvectors" in printed
    assert "total variance 3 (the sum of the column variances)" in printed  # model.output_variance
    assert main(["-q", "embed", str(nyc_run), str(nyc_run / "bundle"), "--out", str(tmp_path / "var1"),
                 "--set", "model.output_variance=1"]) == 0
    var1 = pd.read_parquet(tmp_path / "var1" / "embeddings.parquet").set_index("region_id")
    assert abs(var1.to_numpy(np.float64).var(axis=0).sum() - 1.0) < 1e-4
    np.testing.assert_allclose(var1.to_numpy() * np.sqrt(3.0), full.to_numpy(), rtol=1e-4, atol=1e-6)
    # the same columns, the volumes left out, only at another overall scale
    counts = sum(1 for c in bare.attrs["urbanrep_columns"] if c["holds"].startswith("count:"))
    assert counts == 28 + 65  # 27 POI and 1 land-use count column, mobility's 65 trip columns as shares
    same = np.hstack([full.to_numpy()[:, :bare.shape[1] - counts], full.to_numpy()[:, -counts:]])
    ratio = np.divide(same, bare.to_numpy(), out=np.zeros_like(same), where=np.abs(bare.to_numpy()) > 1e-3)
    np.testing.assert_allclose(ratio[np.abs(bare.to_numpy()) > 1e-3], ratio[0, 0], rtol=1e-3)
    capsys.readouterr()
    main(["-q", "embed", str(nyc_run), str(nyc_run / "bundle"), "--out", str(tmp_path / "x"),
          "--set", "model.expert.num_layers=3"])
    err = capsys.readouterr().err.strip()
    assert "model.expert.num_layers=3 (trained: 2)" in err and "\n" not in err and not (tmp_path / "x").exists()
    # the API: the loaded config holds the model's settings; a written setting changes what transform() gives
    api = UrbanRep.load(nyc_run)
    assert api.config.model == api.model_.config
    api.config = replace(api.config, model=replace(api.config.model, volume_scales=("log",)))
    assert api.transform(read_bundle(nyc_run / "bundle")).shape == (180, full.shape[1] - 3)


def test_resume_after_a_kill_equals_uninterrupted(tmp_path: Path, nyc_run: Path) -> None:
    from urbanrep.pipeline import train_stage

    graph = nyc_run / "graph.pt"
    full = train_stage(graph, tmp_path / "full", tiny_config(epochs=4))
    part = tmp_path / "part"
    train_stage(graph, part, tiny_config(epochs=2, checkpoint_every=1))  # "killed" after epoch 2
    resumed = train_stage(graph, part, tiny_config(epochs=4, checkpoint_every=1), resume=True)
    assert full.result_ is not None and resumed.result_ is not None
    np.testing.assert_array_equal(full.result_.embeddings, resumed.result_.embeddings)
    assert len(pd.read_csv(part / "loss.csv")) == 4


def test_user_mistakes_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = [
        ["run", "--out", str(tmp_path / "r"), "--set", "train.epoch=3"],  # misspelt key
        ["run", "--out", str(tmp_path / "r"), "--set", "train.epochs=many"],  # wrong type
        ["run", "--out", str(tmp_path / "r"), "--config", str(tmp_path / "missing.yaml")],
        ["train", str(tmp_path / "nothing.pt"), "--out", str(tmp_path / "t")],
        ["evaluate", str(tmp_path)],
        ["embed", str(tmp_path), "nyc_manhattan180", "--out", str(tmp_path / "e")],
    ]
    for argv in cases:
        capsys.readouterr()
        assert main(["-q", *argv]) == 1, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("urbanrep: error:") and "\n" not in err and "Traceback" not in err, (argv, err)
    assert "valid keys" in _err_of(["run", "--set", "train.epoch=3"], tmp_path, capsys)


def _err_of(argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    main(["-q", *argv, "--out", str(tmp_path / "x")])
    return capsys.readouterr().err


def test_config_file_and_overrides(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  epochs: 7\nmodel:\n  fusion:\n    mode: global\nevaluate:\n  protocol: paper\n")
    c = load_run_config(cfg, ["train.epochs=9"])
    assert c.train.epochs == 9 and c.model.fusion.mode == "global" and c.evaluate.protocol == "paper"
    toml = tmp_path / "c.toml"
    toml.write_text("[train]\nseed = 4\n")
    assert load_run_config(toml).train.seed == 4
    assert RunConfig.from_mapping(json.loads(json.dumps(c.to_dict()))) == c


def test_api_on_your_own_geodataframes(tmp_path: Path) -> None:
    """The README quickstart: a bundle from plain GeoDataFrames, fit, transform, save, load."""
    from urbanrep import CityBundle, UrbanRep

    cells = [box(x, y, x + 500, y + 500) for y in range(0, 2500, 500) for x in range(0, 2500, 500)]
    regions = gpd.GeoDataFrame({"region_id": [f"cell{i}" for i in range(25)]}, geometry=cells, crs="EPSG:32633")
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 2500, size=(400, 2))
    pois = gpd.GeoDataFrame({"category": rng.choice(["cafe", "school", "shop"], 400)},
                            geometry=gpd.points_from_xy(xy[:, 0], xy[:, 1]), crs="EPSG:32633")
    bundle = CityBundle(name="mytown", regions=regions, pois=pois)

    model = UrbanRep(tiny_config()).fit(bundle)
    emb = model.transform(bundle)
    assert list(emb.index) == list(regions["region_id"]) and emb.index.name == "region_id"
    # + POI volumes and the POI count columns (one per category and the total: cafe, school, shop, all)
    assert emb.shape == (25, 16 + 2 * scale_width(25, 16, 8) + position_count(25, 8) + 2 + 4) and np.isfinite(emb.to_numpy()).all()
    weights = model.fusion_weights(bundle)
    assert list(weights.columns) == ["poi"]
    model.save(tmp_path / "m")
    again = UrbanRep.load(tmp_path / "m")
    pd.testing.assert_frame_equal(again.transform(bundle), emb, atol=1e-6)


def test_api_refuses_a_city_of_other_feature_widths(tmp_path: Path) -> None:
    from urbanrep import UrbanRep, UrbanRepError

    model = UrbanRep(tiny_config()).fit(grid_bundle(4))
    other = grid_bundle(4, seed=1)
    other.pois = other.pois.assign(category="food")  # one category instead of three
    with pytest.raises(UrbanRepError, match="features"):
        model.transform(other)
    with pytest.raises(UrbanRepError, match="not fitted"):
        UrbanRep().transform(other)


def test_run_without_data_root_uses_embedded_copy(tmp_path: Path) -> None:
    """A fresh machine: no data root, started outside the repository (its own process)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {**os.environ, "URBANREP_DATA": str(empty)}
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "urbanrep", "run", "--out", str(out), *TINY],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "embedded" in proc.stderr
    emb = pd.read_parquet(out / "embeddings.parquet")
    assert len(emb) == 180
    assert (out / "metrics.json").exists()


def test_run_on_a_bundle_without_targets(tmp_path: Path) -> None:
    from urbanrep.bundle import write_bundle

    b = grid_bundle(4)
    b.targets = None
    write_bundle(b, tmp_path / "grid")
    out = tmp_path / "run"
    assert main(["-q", "run", str(tmp_path / "grid"), "--out", str(out), *TINY]) == 0
    summary = json.loads((out / "run.json").read_text())
    assert "no targets" in summary["skipped"]["evaluate"]
    assert (out / "embeddings.parquet").exists() and not (out / "metrics.json").exists()


def test_help_on_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    for cmd in ("prepare", "validate", "build-graphs", "train", "embed", "evaluate", "export", "run", "info"):
        with pytest.raises(SystemExit) as exc:
            main([cmd, "--help"])
        assert exc.value.code == 0
        assert "usage: urbanrep" in capsys.readouterr().out


def test_info_on_a_run_folder(nyc_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["-q", "info", str(nyc_run)]) == 0
    out = capsys.readouterr().out
    assert "180 regions" in out and "check_in" in out


def test_progress_reporter_sees_training(nyc_run: Path) -> None:
    from urbanrep.pipeline import train_stage
    from urbanrep.progress import set_reporter

    seen: dict[str, int] = {}

    class Bar:
        def __init__(self, stage: str) -> None:
            self.stage = stage

        def update(self, n: int = 1, **info: object) -> None:
            seen[self.stage] = seen.get(self.stage, 0) + n

        def close(self) -> None:
            pass

    totals: dict[str, int | None] = {}

    def reporter(stage: str, total: int | None) -> Bar:
        totals[stage] = total
        return Bar(stage)

    prev = set_reporter(reporter)
    try:
        train_stage(nyc_run / "graph.pt", None, tiny_config(epochs=3))
        from urbanrep.bundle import read_bundle
        from urbanrep.graphs import build_graph

        build_graph(read_bundle(nyc_run / "bundle"))
    finally:
        set_reporter(prev)
    assert seen.get("training") == 3 == totals["training"]
    assert seen.get("graph building") == totals["graph building"] == 8  # 4 fixed stages + 4 modalities


MINIBATCH = ["--set", "train.mode=minibatch", "--set", "minibatch.batch_size=64", "--set", "minibatch.partition_size=32",
             "--set", "minibatch.num_neighbors=[5]"]


def test_minibatch_mode_from_the_command_line(nyc_run: Path, tmp_path: Path) -> None:
    """``--set train.mode=minibatch`` trains on sampled batches, checkpoints them and resumes."""
    import torch

    graph, out = nyc_run / "graph.pt", tmp_path / "mb"
    assert main(["-q", "train", str(graph), "--out", str(out), *TINY, *MINIBATCH, "--set", "train.epochs=2"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["mode"] == "minibatch" and config["minibatch"]["batch_size"] == 64
    ckpt = torch.load(out / "checkpoints" / "epoch_000002.pt", weights_only=True)
    assert json.loads(ckpt["minibatch_config"]) == {"sampler": "partition", "batch_size": 64, "partition_size": 32,
                                                    "num_neighbors": [5], "loss_nodes": None}
    assert main(["-q", "train", str(graph), "--out", str(out), "--resume", *TINY, *MINIBATCH]) == 0
    assert list(pd.read_csv(out / "loss.csv")["epoch"]) == [1, 2, 3]
    straight = tmp_path / "straight"
    assert main(["-q", "train", str(graph), "--out", str(straight), *TINY, *MINIBATCH]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(out / "embeddings.parquet"),
                                  pd.read_parquet(straight / "embeddings.parquet"))
    full = pd.read_parquet(nyc_run / "embeddings.parquet")  # the run's full-graph default differs
    assert not np.allclose(full.drop(columns="region_id").to_numpy(),
                           pd.read_parquet(out / "embeddings.parquet").drop(columns="region_id").to_numpy())


def test_estimator_minibatch_with_sampled_inference(nyc_run: Path) -> None:
    from urbanrep.graphs import load_graph
    from urbanrep.model import UrbanRep

    config = load_run_config(None, [s for s in TINY + MINIBATCH if s != "--set"]
                             + ["minibatch.inference=sampled", "minibatch.inference_batch_size=50"])
    data = load_graph(nyc_run / "graph.pt")
    api = UrbanRep(config).fit(data)
    assert api.result_ is not None and len(api.result_.history) == 3
    assert "mode=minibatch" in repr(api)
    emb = api.transform()
    assert emb.shape == (180, 16 * 3 + position_count(180, 8) + 2 * 3 + 28 + 65) and np.isfinite(emb.to_numpy()).all()
    np.testing.assert_allclose(emb.to_numpy(), api.result_.embeddings, atol=1e-6)  # same sampled inference


def test_minibatch_launch_mistakes_are_one_line_errors(nyc_run: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    graph = str(nyc_run / "graph.pt")
    cases = [
        ["train", graph, "--out", str(tmp_path / "t"), "--nproc", "2", "--set", "train.epochs=3"],  # full graph
        ["train", graph, "--out", str(tmp_path / "t"), "--set", "train.mode=sampled"],
        ["train", graph, "--out", str(tmp_path / "t"), "--set", "minibatch.batch_size=0"],
    ]
    for argv in cases:
        capsys.readouterr()
        assert main(["-q", *argv]) == 1, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("urbanrep: error:") and "\n" not in err, (argv, err)


@pytest.mark.slow
def test_train_nproc_two_on_cpu(nyc_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``urbanrep train --nproc 2`` spawns two gloo processes; rank 0's files come back to the caller."""
    out = tmp_path / "dp"
    capsys.readouterr()
    assert main(["-q", "train", str(nyc_run / "graph.pt"), "--out", str(out), "--nproc", "2", *TINY, *MINIBATCH]) == 0
    assert "trained 3 epochs" in capsys.readouterr().out
    assert list(pd.read_csv(out / "loss.csv")["epoch"]) == [1, 2, 3]
    assert main(["-q", "train", str(nyc_run / "graph.pt"), "--out", str(out), "--nproc", "2", "--resume", *TINY,
                 *MINIBATCH, "--set", "train.epochs=4"]) == 0
    assert list(pd.read_csv(out / "loss.csv")["epoch"]) == [1, 2, 3, 4]
    emb = pd.read_parquet(out / "embeddings.parquet")
    assert len(emb) == 180 and np.isfinite(emb.drop(columns="region_id").to_numpy()).all()
