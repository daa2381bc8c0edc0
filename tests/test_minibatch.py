"""Neighbour-sampled mini-batch training: sampler, training, run folder, checkpoints and resume."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import Killed, assert_same_run

from urbanrep.distributed import Ranks
from urbanrep.errors import ConfigError, UrbanRepError
from urbanrep.experts.base import ExpertConfig
from urbanrep.experts.testing import random_region_graph
from urbanrep.fusion import FusionConfig, LossConfig
from urbanrep.minibatch import MiniBatchConfig, RegionSampler, _rank_batches, train_minibatch
from urbanrep.network import ModelConfig, RegionModel
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

SMALL = ModelConfig(expert=ExpertConfig(hidden_channels=16, out_channels=8, num_layers=1, heads=2),
                    fusion=FusionConfig(hidden_channels=8), projection_channels=8, ensemble=1,
                    loss=LossConfig(fusion_weight=1.0, fusion_contrast="views"))
FAST = TrainConfig(epochs=3, lr=5e-3, device="cpu", log_every=1000, num_threads=1, mode="minibatch")
BATCHES = MiniBatchConfig(sampler="neighbor", batch_size=64, num_neighbors=(5, 5))  # 3 batches per epoch on NYC-180
PARTS = MiniBatchConfig(batch_size=64, partition_size=32)  # 6 blocks of 30 regions, 2 per batch: 3 batches
HALO = MiniBatchConfig(batch_size=64, partition_size=32, num_neighbors=(3,), loss_nodes=20)  # + a 1-hop halo,
# losses on 20 of the ~60 seeds
SAMPLERS = pytest.mark.parametrize("batches", [BATCHES, PARTS, HALO], ids=["neighbor", "partition", "halo"])


@pytest.fixture(scope="module")
def nyc_graph():
    from urbanrep.datasets import load_dataset
    from urbanrep.graphs import build_graph

    graph, _ = build_graph(load_dataset(None))
    return graph


def test_sampler_fanout_and_khop() -> None:
    g = random_region_graph(300, ("poi", "landuse"), seed=1)
    rng = np.random.default_rng(0)
    seeds = np.array([3, 7, 11])
    one = RegionSampler(g, (2,)).sample(seeds, rng)
    assert set(seeds) <= set(one.tolist()) and len(one) <= 3 + 3 * 2
    full = RegionSampler(g, (-1,)).sample(seeds, rng)
    from torch_geometric.utils import k_hop_subgraph

    ei = torch.cat([g[et].edge_index for et in g.edge_types if et[0] == et[2] == "region"], 1)
    ei = torch.cat([ei, ei.flip(0)], 1)
    expect, *_ = k_hop_subgraph(torch.from_numpy(seeds), 1, ei, num_nodes=300)
    assert full.tolist() == sorted(expect.tolist())


def test_subgraph_keeps_schema_and_images() -> None:
    g = random_region_graph(200, ("poi", "street_view"), seed=2)
    s = RegionSampler(g, (3, 3))
    nodes = s.sample(np.arange(5), np.random.default_rng(0))
    sub = s.subgraph(g, nodes)
    assert sub["region"].num_nodes == len(nodes)
    assert sub["region"].x_poi.shape[0] == len(nodes)
    members = sub["image", "in_region", "region"].edge_index
    assert sub["image"].num_nodes == members.size(1) > 0
    assert sub.region_ids == [g.region_ids[i] for i in nodes]


def test_minibatch_nyc180(nyc_graph) -> None:
    tc = TrainConfig(epochs=2, num_threads=1, seed=3)
    res = train_minibatch(nyc_graph, ModelConfig(expert=ExpertConfig(hidden_channels=32, out_channels=16), ensemble=1), tc,
                          MiniBatchConfig(batch_size=64, num_neighbors=(5, 5)))
    n = nyc_graph["region"].num_nodes
    assert res.embeddings.shape == (n, res.model.written_channels(nyc_graph)) and np.isfinite(res.embeddings).all()
    assert res.fusion_weights.shape == (n, len(res.modalities))
    assert len(res.history) == 2 and all(np.isfinite(r["total"]) for r in res.history)
    assert list(res.embeddings_frame().index) == list(nyc_graph.region_ids)
    again = train_minibatch(nyc_graph, ModelConfig(expert=ExpertConfig(hidden_channels=32, out_channels=16), ensemble=1), tc,
                            MiniBatchConfig(batch_size=64, num_neighbors=(5, 5), inference="sampled",
                                            inference_batch_size=50))
    assert np.allclose(again.history[-1]["total"], res.history[-1]["total"])  # seeded
    assert again.embeddings.shape == (n, res.model.written_channels(nyc_graph)) and np.isfinite(again.embeddings).all()


def test_minibatch_config_checked() -> None:
    with pytest.raises(ConfigError, match="neighbour sampler"):
        MiniBatchConfig(sampler="neighbor", num_neighbors=())
    with pytest.raises(ConfigError, match="sampler"):
        MiniBatchConfig(sampler="cluster")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="partition_size"):
        MiniBatchConfig(partition_size=0)
    assert MiniBatchConfig().num_neighbors == () and MiniBatchConfig(sampler="neighbor").num_neighbors == (10, 10, 5)
    with pytest.raises(ConfigError):
        MiniBatchConfig(batch_size=0)


def test_rank_batches_share_out_an_epoch() -> None:
    """Every rank draws the same permutation, takes disjoint batches, and all take as many steps."""
    n, size = 103, 10  # 11 batches: 3 ranks take 4 each, the last round wraps around
    per_rank = [_rank_batches(n, size, np.random.default_rng(5), Ranks(r, 3)) for r in range(3)]
    assert [len(b) for b in per_rank] == [4, 4, 4]
    single = _rank_batches(n, size, np.random.default_rng(5), Ranks())
    assert len(single) == 11 and sorted(np.concatenate(single).tolist()) == list(range(n))
    firsts = [np.concatenate(b[:3]) for b in per_rank]  # the first 9 batches, before wrapping
    seen = np.concatenate(firsts)
    assert len(np.unique(seen)) == len(seen) == 90
    assert np.array_equal(per_rank[0][0], single[0]) and np.array_equal(per_rank[1][0], single[1])
    assert np.array_equal(per_rank[2][3], single[0])  # wrapped round
    assert sorted(np.concatenate([*firsts, per_rank[0][3], per_rank[1][3]]).tolist()) == list(range(n))


def test_train_dispatches_on_mode(nyc_graph) -> None:
    """``train(mode="minibatch")`` is ``train_minibatch``; full-graph training stays the default."""
    via_train = train(nyc_graph, SMALL, FAST, minibatch_config=BATCHES)
    direct = train_minibatch(nyc_graph, SMALL, dataclasses.replace(FAST, mode="full"), BATCHES)
    assert np.array_equal(via_train.embeddings, direct.embeddings) and via_train.history == direct.history
    assert [r["epoch"] for r in direct.history] == [1, 2, 3]
    full = train(nyc_graph, SMALL, dataclasses.replace(FAST, mode="full"))
    assert not np.allclose(full.embeddings, direct.embeddings)
    assert TrainConfig().mode == "full"
    with pytest.raises(ConfigError, match="mode"):
        TrainConfig(mode="sampled")  # type: ignore[arg-type]


def test_minibatch_run_dir_outputs(nyc_graph, tmp_path: Path) -> None:
    res = train_minibatch(nyc_graph, SMALL, dataclasses.replace(FAST, epochs=2), BATCHES, run_dir=tmp_path)
    loss = pd.read_csv(tmp_path / LOSS_CSV)
    assert list(loss["epoch"]) == [1, 2]
    np.testing.assert_allclose(loss["total"], [r["total"] for r in res.history])
    assert sorted(p.name for p in (tmp_path / CHECKPOINT_DIR).glob("*.pt")) == ["epoch_000002.pt"]
    emb = pd.read_parquet(tmp_path / EMBEDDINGS)
    assert list(emb["region_id"]) == list(nyc_graph.region_ids)
    np.testing.assert_array_equal(emb.drop(columns="region_id").to_numpy(), res.embeddings)
    assert list(pd.read_parquet(tmp_path / FUSION_WEIGHTS).columns) == ["region_id", *res.modalities]
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]
    with torch.no_grad():  # the saved model reproduces the (full-graph inference) embedding
        model = load_model(tmp_path / MODEL_FILE)
        again = model.final_embedding(model(nyc_graph).embedding.numpy(), nyc_graph)
    np.testing.assert_allclose(again, res.embeddings, atol=1e-6)
    assert res.run_dir == tmp_path and res.epochs_run == 2 and res.cpu_time_s > 0


@SAMPLERS
def test_minibatch_resume_after_kill_equals_uninterrupted(nyc_graph, tmp_path: Path, monkeypatch,
                                                         batches: MiniBatchConfig) -> None:
    """Killed in epoch 3 (checkpoints each epoch), resumed to 4: bit-for-bit the uninterrupted run.

    Model, optimiser, torch RNGs and the sampler's numpy RNGs are all restored; a resume that
    re-drew any of them would sample other neighbours, dropouts or augmentations.
    """
    tc = dataclasses.replace(FAST, epochs=4, checkpoint_every=1)
    full = train_minibatch(nyc_graph, SMALL, tc, batches, run_dir=tmp_path / "full")
    calls = {"n": 0}
    real_loss = RegionModel.loss

    def dying_loss(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 8:  # epoch 3, batch 2
            raise Killed
        return real_loss(self, *args, **kwargs)

    run = tmp_path / "killed"
    monkeypatch.setattr(RegionModel, "loss", dying_loss)
    with pytest.raises(Killed):
        train_minibatch(nyc_graph, SMALL, tc, batches, run_dir=run)
    monkeypatch.setattr(RegionModel, "loss", real_loss)
    assert latest_checkpoint(run).name == "epoch_000002.pt"
    assert len(pd.read_csv(run / LOSS_CSV)) == 2 and not (run / EMBEDDINGS).exists()
    resumed = train_minibatch(nyc_graph, SMALL, tc, batches, run_dir=run, resume=True)
    assert resumed.epochs_run == 4
    assert_same_run(full, resumed, tmp_path / "full", run)


@SAMPLERS
def test_minibatch_resume_with_larger_budget_and_sampled_inference(nyc_graph, tmp_path: Path,
                                                                   batches: MiniBatchConfig) -> None:
    """Two epochs, then resumed to four through ``train``, equals four in one go (inference may change)."""
    sampled = dataclasses.replace(batches, inference="sampled", inference_batch_size=50)
    full = train_minibatch(nyc_graph, SMALL, dataclasses.replace(FAST, epochs=4), sampled, run_dir=tmp_path / "full")
    train_minibatch(nyc_graph, SMALL, dataclasses.replace(FAST, epochs=2), batches, run_dir=tmp_path / "split")
    resumed = train(nyc_graph, SMALL, dataclasses.replace(FAST, epochs=4), tmp_path / "split", resume=True,
                    minibatch_config=sampled)
    assert_same_run(full, resumed, tmp_path / "full", tmp_path / "split")


def test_minibatch_resume_refuses_a_different_run(nyc_graph, tmp_path: Path) -> None:
    train_minibatch(nyc_graph, SMALL, dataclasses.replace(FAST, epochs=1), BATCHES, run_dir=tmp_path / "mb")
    more = dataclasses.replace(FAST, epochs=2)
    with pytest.raises(ConfigError, match="different model configuration"):
        train_minibatch(nyc_graph, dataclasses.replace(SMALL, uniform_experts=True), more, BATCHES,
                        run_dir=tmp_path / "mb", resume=True)
    with pytest.raises(ConfigError, match="batch_size"):
        train_minibatch(nyc_graph, SMALL, more, dataclasses.replace(BATCHES, batch_size=32),
                        run_dir=tmp_path / "mb", resume=True)
    with pytest.raises(ConfigError, match="num_neighbors"):
        train_minibatch(nyc_graph, SMALL, more, dataclasses.replace(BATCHES, num_neighbors=(5, 3)),
                        run_dir=tmp_path / "mb", resume=True)
    with pytest.raises(ConfigError, match="sampler"):
        train_minibatch(nyc_graph, SMALL, more, PARTS, run_dir=tmp_path / "mb", resume=True)
    train_minibatch(nyc_graph, SMALL, dataclasses.replace(FAST, epochs=1), PARTS, run_dir=tmp_path / "parts")
    with pytest.raises(ConfigError, match="partition_size"):
        train_minibatch(nyc_graph, SMALL, more, dataclasses.replace(PARTS, partition_size=16),
                        run_dir=tmp_path / "parts", resume=True)
    with pytest.raises(ConfigError, match="seed"):
        train_minibatch(nyc_graph, SMALL, dataclasses.replace(more, seed=9), BATCHES, run_dir=tmp_path / "mb",
                        resume=True)
    with pytest.raises(ConfigError, match="mode"):  # a mini-batch checkpoint is no full-graph one
        train(nyc_graph, SMALL, dataclasses.replace(more, mode="full"), tmp_path / "mb", resume=True)
    train(nyc_graph, SMALL, dataclasses.replace(FAST, epochs=1, mode="full"), tmp_path / "full")
    with pytest.raises(ConfigError, match="mode"):
        train_minibatch(nyc_graph, SMALL, more, BATCHES, run_dir=tmp_path / "full", resume=True)
    with pytest.raises(ConfigError, match="run_dir"):
        train_minibatch(nyc_graph, SMALL, more, BATCHES, resume=True)


def test_minibatch_resume_with_another_process_count(nyc_graph, tmp_path: Path, caplog) -> None:
    """A checkpoint of a 2-process run resumed by one process: weights kept, RNG streams re-seeded."""
    import logging

    tc = dataclasses.replace(FAST, epochs=2)
    train_minibatch(nyc_graph, SMALL, tc, BATCHES, run_dir=tmp_path)
    path = latest_checkpoint(tmp_path)
    ckpt = torch.load(path, weights_only=True)
    ckpt["rank_states"] = [ckpt["rank_states"][0]] * 2  # as if two ranks had written it
    torch.save(ckpt, path)
    with caplog.at_level(logging.WARNING, logger="urbanrep.minibatch"):
        resumed = train_minibatch(nyc_graph, SMALL, dataclasses.replace(tc, epochs=3), BATCHES, run_dir=tmp_path,
                                  resume=True)
    assert "written by 2 processes" in caplog.text
    assert resumed.epochs_run == 3 and [r["epoch"] for r in resumed.history] == [1, 2, 3]
    assert resumed.history[:2] == ckpt["history"] and np.isfinite(resumed.embeddings).all()


def test_minibatch_unreadable_checkpoint_is_named(nyc_graph, tmp_path: Path) -> None:
    (tmp_path / CHECKPOINT_DIR).mkdir(parents=True)
    (tmp_path / CHECKPOINT_DIR / "epoch_000001.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UrbanRepError, match="epoch_000001.pt"):
        train_minibatch(nyc_graph, SMALL, FAST, BATCHES, run_dir=tmp_path, resume=True)


def test_minibatch_early_stopping(nyc_graph) -> None:
    res = train_minibatch(nyc_graph, SMALL, dataclasses.replace(FAST, epochs=20, early_stopping=True, patience=2,
                                                                min_delta=1e6), BATCHES)
    assert res.stopped_early and res.epochs_run == 3 and len(res.history) == 3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_minibatch_on_gpu(nyc_graph, tmp_path: Path) -> None:
    tc = dataclasses.replace(FAST, device="cuda", amp=True, epochs=3, checkpoint_every=1)
    res = train_minibatch(nyc_graph, SMALL, tc, BATCHES, run_dir=tmp_path)
    assert next(res.model.parameters()).is_cuda and not nyc_graph["region"].pos.is_cuda
    assert np.isfinite(res.embeddings).all() and res.embeddings.dtype == np.float32
    assert res.history[-1]["total"] < res.history[0]["total"]
    resumed = train_minibatch(nyc_graph, SMALL, dataclasses.replace(tc, epochs=4), BATCHES, run_dir=tmp_path,
                              resume=True)
    assert resumed.epochs_run == 4 and np.isfinite(resumed.embeddings).all()


@pytest.mark.slow
def test_minibatch_100k_regions(tmp_path: Path) -> None:
    """One epoch over 100k regions on CPU with the default partition sampler and a run folder."""
    g = random_region_graph(100_000, ("poi", "mobility", "landuse"), seed=0)
    res = train_minibatch(g, ModelConfig(expert=ExpertConfig(hidden_channels=16, out_channels=16), ensemble=1),
                          TrainConfig(epochs=1, num_threads=1),
                          MiniBatchConfig(), run_dir=tmp_path)
    assert res.embeddings.shape == (100_000, res.model.written_channels(g)) and np.isfinite(res.embeddings).all()
    assert np.isfinite(res.history[-1]["total"])
    assert latest_checkpoint(tmp_path).name == "epoch_000001.pt"
    assert len(pd.read_parquet(tmp_path / EMBEDDINGS)) == 100_000
