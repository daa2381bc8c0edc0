"""Training loop: loss goes down, seeding, resume after a kill, outputs, ablations, every bundle."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import Killed, assert_same_run

from urbanrep.errors import ConfigError, UrbanRepError
from urbanrep.experts import ExpertConfig, MoEConfig
from urbanrep.experts.testing import random_region_graph
from urbanrep.fusion import FusionConfig, LossConfig
from urbanrep.network import ModelConfig, RegionModel
from urbanrep.position import position_count
from urbanrep.smoothing import scale_width
from urbanrep.train import (
    CHECKPOINT_DIR,
    EMBEDDINGS,
    FUSION_WEIGHTS,
    LOSS_CSV,
    MODEL_FILE,
    TrainConfig,
    latest_checkpoint,
    load_model,
    train,
)
from urbanrep.volumes import count_names, counted_modalities, volume_modalities

ALL = ("poi", "mobility", "landuse", "road", "remote_sensing", "street_view")
BUNDLES = ("nyc_manhattan180", "chicago77", "nyc_tracts", "singapore", "helsinki_osm", "sao_paulo",
           "imagery_samples")
SMALL = ModelConfig(expert=ExpertConfig(hidden_channels=16, out_channels=8, num_layers=1, heads=2),
                    fusion=FusionConfig(hidden_channels=8), projection_channels=8, ensemble=1,
                    loss=LossConfig(fusion_weight=1.0, fusion_contrast="views"))
FAST = TrainConfig(epochs=3, lr=5e-3, device="cpu", log_every=1000)
def written(data) -> int:
    """Columns SMALL writes for the graph ``data``: its 8-wide row, the default hop blocks (cut to one
    component per 8 regions on these small graphs), its positional columns, its volumes, its count columns."""
    n = data["region"].num_nodes
    volumes = 2 * len(volume_modalities(data, data.modalities)) if SMALL.output_volumes else 0
    counts = len(count_names(data, counted_modalities(data.modalities, SMALL), SMALL.output_counts)) \
        if SMALL.output_counts != "none" else 0
    return (8 + SMALL.output_scales * scale_width(n, 8, SMALL.output_scale_regions)
            + position_count(n, SMALL.output_position) + volumes + counts)


def loss_cfg(cfg: ModelConfig, **loss) -> ModelConfig:
    return dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, **loss))


#: Every ablation / option switch, as (ModelConfig, loss parts expected in the history).
SWITCHES: dict[str, tuple[ModelConfig, set[str]]] = {
    "default": (SMALL, {"features", "aggregated", "fusion", "point", "mobility"}),
    "uniform_experts": (dataclasses.replace(SMALL, uniform_experts=True), {"features", "aggregated", "fusion", "point", "mobility"}),
    "global_fusion": (dataclasses.replace(SMALL, fusion=FusionConfig(mode="global", hidden_channels=8)),
                      {"features", "aggregated", "fusion", "point", "mobility"}),
    "shared_topk": (dataclasses.replace(SMALL, moe=MoEConfig(num_shared=2, routing="topk", top_k=1)),
                    {"features", "aggregated", "fusion", "point", "mobility", "balance"}),
    "shared_softmax": (dataclasses.replace(SMALL, moe=MoEConfig(num_shared=1)),
                       {"features", "aggregated", "fusion", "point", "mobility"}),
    "no_aggregated": (loss_cfg(SMALL, aggregated_weight=0.0), {"features", "fusion", "point", "mobility"}),
    "no_fusion": (loss_cfg(SMALL, fusion_weight=0.0), {"features", "aggregated", "point", "mobility"}),
    "no_point": (loss_cfg(SMALL, point_weight=0.0), {"features", "aggregated", "fusion", "mobility"}),
    "no_mobility": (loss_cfg(SMALL, mobility_weight=0.0), {"features", "aggregated", "fusion", "point"}),
    "fusion_vs_modality": (loss_cfg(SMALL, fusion_contrast="modality"), {"features", "aggregated", "fusion", "point", "mobility"}),
    "similarity_losses": (loss_cfg(SMALL, poi_similarity_weight=1.0, landuse_similarity_weight=1.0),
                          {"features", "aggregated", "fusion", "point", "mobility", "poi_similarity", "landuse_similarity"}),
    "no_features": (loss_cfg(SMALL, feature_weight=0.0), {"aggregated", "fusion", "point", "mobility"}),
    "modality_subset": (dataclasses.replace(SMALL, modalities=("poi", "street_view")), {"features", "aggregated", "fusion", "point"}),
}


@pytest.fixture(scope="module")
def synth():
    """30 regions with all six modalities (street view included) and per-slice flows."""
    return random_region_graph(30, ALL, seed=7, num_slices=3, images_per_region=2.0, mask_rate=0.2)


def test_loss_decreases_on_nyc(nyc):
    res = train(nyc, SMALL, dataclasses.replace(FAST, epochs=12))
    totals = [row["total"] for row in res.history]
    assert len(totals) == 12 and all(math.isfinite(t) for t in totals)
    # 12 epochs at lr 5e-3 take the total down by 10% (temperature 0.5; 13% at 0.2): a clear descent
    assert np.mean(totals[-3:]) < 0.93 * np.mean(totals[:3]), totals
    assert all(b < a for a, b in zip(totals, totals[1:], strict=False)), totals
    assert res.embeddings.shape == (180, written(nyc)) and np.isfinite(res.embeddings).all()
    assert res.fusion_weights.shape == (180, 4)
    assert res.region_ids == list(nyc.region_ids)


def test_same_seed_same_embedding(nyc):
    a = train(nyc, SMALL, FAST)
    b = train(nyc, SMALL, FAST)
    c = train(nyc, SMALL, dataclasses.replace(FAST, seed=1))
    assert np.array_equal(a.embeddings, b.embeddings)
    assert np.array_equal(a.fusion_weights, b.fusion_weights)
    assert a.history == b.history
    assert not np.allclose(a.embeddings, c.embeddings)


def test_resume_after_kill_equals_uninterrupted(nyc, tmp_path, monkeypatch):
    """Killed in epoch 6 (last checkpoint: epoch 4), resumed to 7: bit-for-bit the uninterrupted run."""
    tc = dataclasses.replace(FAST, epochs=7, checkpoint_every=2)
    full = train(nyc, SMALL, tc, tmp_path / "full")

    calls = {"n": 0}
    real_loss = RegionModel.loss

    def dying_loss(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:
            raise Killed
        return real_loss(self, *args, **kwargs)

    run = tmp_path / "killed"
    monkeypatch.setattr(RegionModel, "loss", dying_loss)
    with pytest.raises(Killed):
        train(nyc, SMALL, tc, run)
    monkeypatch.setattr(RegionModel, "loss", real_loss)
    assert latest_checkpoint(run).name == "epoch_000004.pt"
    assert len(pd.read_csv(run / LOSS_CSV)) == 5  # rows written after the last checkpoint
    assert not (run / EMBEDDINGS).exists()
    resumed = train(nyc, SMALL, tc, run, resume=True)
    assert resumed.epochs_run == 7
    assert_same_run(full, resumed, tmp_path / "full", run)


def test_resume_with_larger_budget_equals_uninterrupted(nyc, tmp_path):
    """N epochs with checkpoints, then resume to M: the same as M epochs in one go."""
    full = train(nyc, SMALL, dataclasses.replace(FAST, epochs=5), tmp_path / "full")
    first = train(nyc, SMALL, dataclasses.replace(FAST, epochs=3, checkpoint_every=1, keep_checkpoints=2),
                  tmp_path / "split")
    assert first.epochs_run == 3
    assert 0 < first.cpu_time_s  # the run's own CPU seconds (the benchmark's cost measure)
    assert sorted(p.name for p in (tmp_path / "split" / CHECKPOINT_DIR).glob("*.pt")) == \
        ["epoch_000002.pt", "epoch_000003.pt"]
    resumed = train(nyc, SMALL, dataclasses.replace(FAST, epochs=5), tmp_path / "split", resume=True)
    assert_same_run(full, resumed, tmp_path / "full", tmp_path / "split")


def test_resume_refuses_a_different_run(nyc, tmp_path):
    train(nyc, SMALL, dataclasses.replace(FAST, epochs=2), tmp_path)
    other_model = dataclasses.replace(SMALL, uniform_experts=True)
    with pytest.raises(ConfigError, match="different model configuration"):
        train(nyc, other_model, dataclasses.replace(FAST, epochs=3), tmp_path, resume=True)
    with pytest.raises(ConfigError, match="lr"):
        train(nyc, SMALL, dataclasses.replace(FAST, epochs=3, lr=1e-2), tmp_path, resume=True)
    with pytest.raises(ConfigError, match="seed"):
        train(nyc, SMALL, dataclasses.replace(FAST, epochs=3, seed=5), tmp_path, resume=True)
    with pytest.raises(ConfigError, match="regions"):
        other_graph = random_region_graph(20, ("poi", "mobility", "landuse", "remote_sensing"), seed=0,
                                          feature_dims={"poi": 53, "mobility": 65, "landuse": 12,
                                                        "remote_sensing": 512}, num_slices=7)
        train(other_graph, SMALL, dataclasses.replace(FAST, epochs=3), tmp_path, resume=True)
    with pytest.raises(ConfigError, match="run_dir"):
        train(nyc, SMALL, FAST, None, resume=True)


def test_run_dir_outputs(nyc, tmp_path):
    res = train(nyc, SMALL, dataclasses.replace(FAST, epochs=2), tmp_path)
    loss = pd.read_csv(tmp_path / LOSS_CSV)
    assert list(loss["epoch"]) == [1, 2]
    assert {"total", "aggregated", "fusion", "mobility"} <= set(loss.columns)
    np.testing.assert_allclose(loss["total"], [r["total"] for r in res.history])
    emb = pd.read_parquet(tmp_path / EMBEDDINGS)
    assert list(emb.columns) == ["region_id", *[f"emb_{i:03d}" for i in range(written(nyc))]]
    assert list(emb["region_id"]) == list(nyc.region_ids)
    np.testing.assert_array_equal(emb.drop(columns="region_id").to_numpy(), res.embeddings)
    pd.testing.assert_frame_equal(emb.set_index("region_id"), res.embeddings_frame())
    weights = pd.read_parquet(tmp_path / FUSION_WEIGHTS)
    assert list(weights.columns) == ["region_id", "poi", "mobility", "landuse", "remote_sensing"]
    # no temporary files are left behind
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]
    # the saved model reproduces the embedding
    model = load_model(tmp_path / MODEL_FILE)
    with torch.no_grad():
        again = model.final_embedding(model(nyc).embedding.numpy(), nyc)
    np.testing.assert_allclose(again, res.embeddings, atol=1e-6)
    with pytest.raises(UrbanRepError, match="does not exist"):
        load_model(tmp_path / "nope.pt")


def test_early_stopping_uses_training_loss(nyc):
    res = train(nyc, SMALL, dataclasses.replace(FAST, epochs=50, early_stopping=True, patience=2, min_delta=1e6))
    assert res.stopped_early and res.epochs_run == 3 and len(res.history) == 3
    res = train(nyc, SMALL, dataclasses.replace(FAST, epochs=4, early_stopping=True, patience=10))
    assert not res.stopped_early and res.epochs_run == 4


@pytest.mark.parametrize("name", list(SWITCHES))
def test_every_switch_trains(synth, name):
    cfg, parts = SWITCHES[name]
    res = train(synth, cfg, dataclasses.replace(FAST, epochs=2))
    assert set(res.history[-1]) == {"epoch", "total", *parts}
    assert np.isfinite(res.embeddings).all() and res.embeddings.shape == (30, written(synth))
    assert np.isfinite(res.fusion_weights).all()
    assert res.modalities == (cfg.modalities or ALL)


def test_checkpoint_experts_changes_memory_not_results(synth, tmp_path):
    """Activation checkpointing gives bit-identical training, and may be switched on when resuming."""
    tc = dataclasses.replace(FAST, epochs=3, checkpoint_every=1)
    plain = train(synth, SMALL, tc)
    lean_cfg = dataclasses.replace(SMALL, checkpoint_experts=True)
    assert np.array_equal(plain.embeddings, train(synth, lean_cfg, tc).embeddings)
    train(synth, SMALL, dataclasses.replace(tc, epochs=2), tmp_path)
    lean = train(synth, lean_cfg, tc, tmp_path, resume=True)
    assert np.array_equal(plain.embeddings, lean.embeddings) and plain.history == lean.history


def test_model_from_bundle_without_some_modalities(nyc, tmp_path):
    """A graph built without mobility and remote sensing trains, saves, loads and embeds."""
    from urbanrep.datasets import load_dataset
    from urbanrep.graphs import GraphConfig, build_graph

    data, _ = build_graph(load_dataset(None), GraphConfig(modalities=("poi", "landuse")))
    assert list(data.modalities) == ["poi", "landuse"]
    res = train(data, SMALL, FAST, tmp_path)
    assert res.modalities == ("poi", "landuse") and "mobility" not in res.history[-1]
    model = load_model(tmp_path / MODEL_FILE)
    with torch.no_grad():  # the same model applies to a graph that has more modalities
        emb = model.final_embedding(model(nyc).embedding.numpy(), nyc)
    np.testing.assert_allclose(emb, res.embeddings, atol=1e-6)


def test_nonfinite_loss_raises(nyc, monkeypatch):
    real_loss = RegionModel.loss

    def nan_loss(self, *args, **kwargs):
        total, parts = real_loss(self, *args, **kwargs)
        return total * float("nan"), parts

    monkeypatch.setattr(RegionModel, "loss", nan_loss)
    with pytest.raises(UrbanRepError, match="epoch 1"):
        train(nyc, SMALL, FAST)


def test_global_torch_settings_are_restored(synth):
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    train(synth, SMALL, dataclasses.replace(FAST, epochs=1, num_threads=1))
    assert torch.get_num_threads() == threads and torch.are_deterministic_algorithms_enabled() == det


def test_train_config_validation():
    with pytest.raises(ConfigError):
        TrainConfig(epochs=0)
    with pytest.raises(ConfigError):
        TrainConfig(device="tpu")
    with pytest.raises(ConfigError):
        TrainConfig(num_threads=-1)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            train(random_region_graph(10, ("poi",)), SMALL, TrainConfig(epochs=1, device="cuda"))


def _bundle_graph(data_root: Path, name: str):
    from urbanrep.converters import get_converter
    from urbanrep.graphs import GraphConfig, build_graph

    if not (data_root / name).is_dir():
        pytest.skip(f"{name} not in the data root {data_root}")
    data, _ = build_graph(get_converter(name)(data_root / name), GraphConfig())
    return data


@pytest.mark.parametrize("name", BUNDLES)
def test_every_bundle_trains_without_nan(data_root, name):
    data = _bundle_graph(data_root, name)
    res = train(data, SMALL, FAST)
    n = data["region"].num_nodes
    assert res.embeddings.shape == (n, written(data)) and np.isfinite(res.embeddings).all()
    assert np.isfinite(res.fusion_weights).all()
    assert all(math.isfinite(r["total"]) for r in res.history)


@pytest.mark.slow
@pytest.mark.parametrize("name", BUNDLES)
def test_every_bundle_default_model_without_nan(data_root, name):
    """The default model, 100 epochs, on every bundle (minutes on 2 cores)."""
    data = _bundle_graph(data_root, name)
    res = train(data, ModelConfig(), TrainConfig(epochs=100, device="cpu"))
    assert np.isfinite(res.embeddings).all() and np.isfinite(res.fusion_weights).all()
    assert res.history[-1]["total"] < res.history[0]["total"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_train_on_gpu_with_amp(synth):
    res = train(synth, SMALL, TrainConfig(epochs=3, device="cuda", amp=True))
    assert np.isfinite(res.embeddings).all() and res.embeddings.dtype == np.float32
    assert next(res.model.parameters()).is_cuda
    assert not synth["region"].pos.is_cuda  # the caller's graph stays where it was


def test_thread_choice(synth, monkeypatch):
    """One thread for small graphs, OMP_NUM_THREADS and train.num_threads respected, the load caps big graphs."""
    import urbanrep.train as tr

    cpu = torch.device("cpu")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    threads, why = tr.choose_threads(synth, TrainConfig(), cpu)
    assert threads == 1 and "too small" in why
    assert tr.choose_threads(synth, TrainConfig(num_threads=3), cpu) == (3, "train.num_threads=3")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert tr.choose_threads(synth, TrainConfig(), cpu) == (0, "OMP_NUM_THREADS=2")  # 0: torch's setting stays
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(tr, "SMALL_GRAPH_WORK", 1)
    monkeypatch.setattr(tr, "cores_and_load", lambda: (8, 6.6))  # 8 cores, 6.6 busy: 1 free (+ rounding)
    assert tr.choose_threads(synth, TrainConfig(), cpu)[0] == min(torch.get_num_threads(), 1)
    monkeypatch.setattr(tr, "cores_and_load", lambda: (8, 0.2))
    threads, why = tr.choose_threads(synth, TrainConfig(), cpu)
    assert threads == min(torch.get_num_threads(), 8) and "load average 0.2" in why


def test_progress_lines_carry_an_eta(synth, monkeypatch, caplog):
    """A line at epoch 1, whenever LOG_INTERVAL_S has passed, and at the end; each with s/epoch and ETA."""
    import logging

    import urbanrep.train as tr

    caplog.set_level(logging.INFO, logger="urbanrep.train")
    monkeypatch.setattr(tr, "LOG_INTERVAL_S", 0.0)  # every epoch is "10 s later"
    train(synth, SMALL, dataclasses.replace(FAST, epochs=3, num_threads=1))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3"]
    assert all("s/epoch" in line and "ETA" in line for line in lines) and lines[-1].endswith("ETA 0 s")
    chosen = [r.getMessage() for r in caplog.records if "torch thread" in r.getMessage()]
    assert chosen and "train.num_threads=1" in chosen[0]
    assert tr.format_seconds(42) == "42 s" and tr.format_seconds(185) == "3 min 05 s"
    assert tr.format_seconds(3720) == "1 h 02 min"


def test_progress_logging_shows_info_lines_without_logging_setup():
    """From Python with no logging configured, progress_logging (UrbanRep.fit's default) prints to stderr."""
    import subprocess
    import sys

    code = ("import logging\nfrom urbanrep.progress import progress_logging\n"
            "with progress_logging():\n    logging.getLogger('urbanrep.train').info('epoch 1/3 ETA 2 s')\n"
            "logging.getLogger('urbanrep.train').info('after')\n")
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stderr
    assert "urbanrep: epoch 1/3 ETA 2 s" in err and "after" not in err


def test_mobility_only_models_train_at_their_own_rate() -> None:
    """``train.mobility_only_lr_scale`` multiplies the learning rate of a mobility-only model and no other's."""
    from urbanrep.network import GraphMetadata
    from urbanrep.train import learning_rate, make_optimiser

    tc = TrainConfig(lr=1e-3, mobility_only_lr_scale=3.0)
    assert learning_rate(tc, ("mobility",)) == pytest.approx(3e-3)
    assert learning_rate(tc, ("poi", "mobility")) == learning_rate(tc, ("poi",)) == 1e-3
    both = random_region_graph(20, ("poi", "mobility"), seed=0)
    for modalities, rate in ((("mobility",), 3e-3), (("poi", "mobility"), 1e-3), (("poi",), 1e-3)):
        model = RegionModel(ModelConfig(modalities=modalities, ensemble=1), GraphMetadata.from_data(both))
        assert make_optimiser(model, tc).param_groups[0]["lr"] == pytest.approx(rate), modalities
    small = TrainConfig(epochs=3, seed=0, num_threads=1)
    mob = ModelConfig(modalities=("mobility",), ensemble=1)
    same = train(both, mob, small, run_dir=None).embeddings
    faster = train(both, mob, dataclasses.replace(small, mobility_only_lr_scale=3.0), run_dir=None).embeddings
    assert not np.allclose(same, faster)
    poi = ModelConfig(modalities=("poi",), ensemble=1)
    assert np.array_equal(train(both, poi, small, run_dir=None).embeddings,
                          train(both, poi, dataclasses.replace(small, mobility_only_lr_scale=3.0), run_dir=None).embeddings)
    with pytest.raises(ConfigError, match="mobility_only_lr_scale"):
        TrainConfig(mobility_only_lr_scale=0.0)
