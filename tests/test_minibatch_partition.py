"""The partition sampler: spatial blocks, one seed per region and epoch, halo rules, seed-only losses."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from urbanrep.errors import ConfigError
from urbanrep.experts.base import ExpertConfig
from urbanrep.experts.testing import random_region_graph
from urbanrep.fusion import FusionConfig, LossConfig
from urbanrep.minibatch import BatchSampler, MiniBatchConfig, train_minibatch
from urbanrep.network import GraphMetadata, ModelConfig, RegionModel
from urbanrep.partition import PartitionSampler, edge_cut, spatial_partition
from urbanrep.position import position_count
from urbanrep.train import TrainConfig, train

SMALL = ModelConfig(expert=ExpertConfig(hidden_channels=16, out_channels=8, num_layers=1, heads=2),
                    fusion=FusionConfig(hidden_channels=8), projection_channels=8, ensemble=1,
                    loss=LossConfig(fusion_weight=1.0, fusion_contrast="views"))
FAST = TrainConfig(epochs=2, lr=5e-3, device="cpu", log_every=1000, num_threads=1, mode="minibatch")


@pytest.fixture(scope="module")
def graph():
    return random_region_graph(500, ("poi", "mobility", "landuse", "street_view"), seed=4)


def test_spatial_partition_is_balanced_compact_and_deterministic() -> None:
    xy = np.stack(np.meshgrid(np.arange(8.0), np.arange(8.0)), -1).reshape(-1, 2)  # an 8 x 8 grid
    part = spatial_partition(xy, 4)
    assert np.bincount(part).tolist() == [16, 16, 16, 16]
    for p in range(4):  # the four 4 x 4 quadrants
        box = xy[part == p]
        assert np.ptp(box[:, 0]) == 3 and np.ptp(box[:, 1]) == 3
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 1000, (1001, 2))
    part = spatial_partition(pts, 7)
    sizes = np.bincount(part, minlength=7)
    assert sizes.max() - sizes.min() <= 1 and sizes.sum() == 1001
    assert np.array_equal(part, spatial_partition(pts, 7))
    assert spatial_partition(pts, 1).max() == 0 and len(np.unique(spatial_partition(pts[:3], 10))) == 3


def test_spatial_blocks_cut_few_adjacency_edges(graph) -> None:
    s = PartitionSampler(graph, partition_size=50, batch_size=100)  # 5 batches of 2 blocks
    cut = edge_cut(graph, s.part)
    random_cut = edge_cut(graph, np.random.default_rng(0).integers(0, s.num_parts, s.n))
    assert s.num_parts == 10 and cut["adjacent"] < 0.35 < random_cut["adjacent"]
    assert set(cut) == {"adjacent", "mobility", "poi_similar", "landuse_similar"}


def test_every_region_is_a_seed_exactly_once_per_epoch(graph) -> None:
    sampler = BatchSampler(graph, MiniBatchConfig(batch_size=120, partition_size=40))
    assert sampler.partitions is not None and sampler.partitions.parts_per_batch == 3
    assert sampler.partitions.num_parts == 15
    rng = np.random.default_rng(1)
    epochs = [sampler.epoch_batches(rng) for _ in range(3)]
    for batches in epochs:
        assert sorted(np.concatenate(batches).tolist()) == list(range(500))
        assert len(batches) == 5 and all(99 <= len(b) <= 102 for b in batches)  # 15 blocks of 33-34, 3 a batch
        for b in batches:  # a batch is whole blocks
            blocks = np.unique(sampler.partitions.part[b])
            assert len(b) == sum(len(sampler.partitions.members[p]) for p in blocks)
    assert not all(np.array_equal(a, b) for a, b in zip(epochs[0], epochs[1], strict=True))  # redrawn each epoch
    again = [BatchSampler(graph, MiniBatchConfig(batch_size=120, partition_size=40)).epoch_batches(rng2)
             for rng2 in [np.random.default_rng(1)]][0]
    assert all(np.array_equal(a, b) for a, b in zip(epochs[0], again, strict=True))  # determined by the seed
    inference = sampler.inference_batches()
    assert sorted(np.concatenate(inference).tolist()) == list(range(500))


def test_batch_without_halo_is_the_induced_subgraph_of_its_seeds(graph) -> None:
    sampler = BatchSampler(graph, MiniBatchConfig(batch_size=100, partition_size=50))
    seeds = sampler.epoch_batches(np.random.default_rng(0))[0]
    sub, nodes = sampler.batch(graph, seeds, np.random.default_rng(0))
    assert np.array_equal(nodes, seeds) and "seed_mask" not in sub["region"]
    inside = np.zeros(500, bool)
    inside[seeds] = True
    for et in graph.edge_types:
        if et[0] == et[2] == "region":
            ei = graph[et].edge_index.numpy()
            assert sub[et].edge_index.size(1) == int((inside[ei[0]] & inside[ei[1]]).sum())
    owners = graph["image", "in_region", "region"].edge_index[1].numpy()
    assert sub["image"].num_nodes == int(inside[owners].sum())


def test_halo_is_sampled_one_hop_context_marked_apart_from_the_seeds(graph) -> None:
    sampler = BatchSampler(graph, MiniBatchConfig(batch_size=100, partition_size=50, num_neighbors=(2,)))
    seeds = sampler.epoch_batches(np.random.default_rng(0))[0]
    sub, nodes = sampler.batch(graph, seeds, np.random.default_rng(0))
    mask = sub["region"].seed_mask.numpy()
    assert np.array_equal(nodes[mask], seeds) and (~mask).sum() > 0
    halo = set(nodes[~mask].tolist())
    ei = torch.cat([graph[et].edge_index for et in graph.edge_types if et[0] == et[2] == "region"], 1).numpy()
    ei = np.concatenate([ei, ei[::-1]], 1)
    from_seeds = ei[:, np.isin(ei[0], seeds) & ~np.isin(ei[1], seeds)]
    assert halo <= set(from_seeds[1].tolist())  # halo regions are neighbours of seeds, one hop out
    assert len(halo) <= 2 * len(seeds)  # at most two neighbours drawn per seed
    full = BatchSampler(graph, MiniBatchConfig(batch_size=100, partition_size=50, num_neighbors=(-1,)))
    _, all_nodes = full.batch(graph, seeds, np.random.default_rng(0))
    assert set(all_nodes.tolist()) == set(seeds.tolist()) | set(from_seeds[1].tolist())  # -1: the whole 1-hop halo


def test_losses_on_a_share_of_the_seeds(graph) -> None:
    """``loss_nodes`` seeds of each batch carry the loss; by default sized to one full step's loss work."""
    sampler = BatchSampler(graph, MiniBatchConfig(batch_size=100, partition_size=50))
    seeds = sampler.epoch_batches(np.random.default_rng(0))[0]
    sub, nodes = sampler.batch(graph, seeds, np.random.default_rng(3), loss_nodes=30)
    mask = sub["region"].seed_mask.numpy()
    assert mask.sum() == 30 and np.isin(nodes[mask], seeds).all()
    again, _ = sampler.batch(graph, seeds, np.random.default_rng(3), loss_nodes=30)
    assert torch.equal(again["region"].seed_mask, sub["region"].seed_mask)  # drawn with the sampler's stream
    assert "seed_mask" not in sampler.batch(graph, seeds, np.random.default_rng(3), loss_nodes=100)[0]["region"]
    assert sampler.loss_nodes(2048) == 916  # 5 batches per epoch: 2048 / sqrt(5)
    many = BatchSampler(graph, MiniBatchConfig(batch_size=10, partition_size=5))
    assert many.loss_nodes(2048) == 290 and many.loss_nodes(512) == 256  # 50 batches; at least 256
    assert BatchSampler(graph, MiniBatchConfig(batch_size=10, loss_nodes=7)).loss_nodes(2048) == 7
    assert BatchSampler(graph, MiniBatchConfig(sampler="neighbor")).loss_nodes(2048) is None
    with pytest.raises(ConfigError, match="loss_nodes"):
        MiniBatchConfig(loss_nodes=1)


def test_loss_is_taken_on_the_seed_rows_only(graph) -> None:
    sampler = BatchSampler(graph, MiniBatchConfig(batch_size=100, partition_size=50, num_neighbors=(3,)))
    seeds = sampler.epoch_batches(np.random.default_rng(0))[0]
    sub, nodes = sampler.batch(graph, seeds, np.random.default_rng(0))
    model = RegionModel(dataclasses.replace(SMALL, loss=LossConfig()), GraphMetadata.from_data(graph))
    model.eval()
    out = model(sub)
    mask = sub["region"].seed_mask

    def loss(o) -> float:
        return float(model.loss(sub, o, torch.Generator().manual_seed(0))[0].detach())

    def perturbed(rows: torch.Tensor):
        emb = out.embedding.clone()
        emb[rows] += 1.0
        zs = {m: z.clone() for m, z in out.modality_embeddings.items()}
        for z in zs.values():
            z[rows] += 1.0
        return dataclasses.replace(out, embedding=emb, modality_embeddings=zs)

    base = loss(out)
    assert loss(perturbed(~mask)) == base  # the halo rows do not enter the loss
    assert loss(perturbed(mask)) != base
    del sub["region"].seed_mask
    assert loss(out) != base  # without the mask every row does


def test_one_batch_is_full_graph_training(graph) -> None:
    """A graph no larger than one batch trains exactly as full-graph training does."""
    tc = dataclasses.replace(FAST, mode="full")
    full = train(graph, SMALL, tc)
    one = train_minibatch(graph, SMALL, tc, MiniBatchConfig(batch_size=500, partition_size=100))
    assert np.array_equal(full.embeddings, one.embeddings) and full.history == one.history


def test_partition_training_is_seeded_and_covers_every_region(graph) -> None:
    bc = MiniBatchConfig(batch_size=200, partition_size=100, num_neighbors=(2,), inference="sampled",
                         inference_batch_size=200)
    a = train_minibatch(graph, SMALL, FAST, bc)
    b = train_minibatch(graph, SMALL, FAST, bc)
    c = train_minibatch(graph, SMALL, dataclasses.replace(FAST, seed=1), bc)
    assert np.array_equal(a.embeddings, b.embeddings) and a.history == b.history
    assert not np.allclose(a.embeddings, c.embeddings)
    assert a.embeddings.shape == (500, 8 * (1 + SMALL.output_scales) + position_count(500, SMALL.output_position)) and np.isfinite(a.embeddings).all() and (a.embeddings != 0).any(1).all()
