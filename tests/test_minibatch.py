"""Neighbour-sampled mini-batch training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from urbanrep.errors import ConfigError
from urbanrep.experts.base import ExpertConfig
from urbanrep.experts.testing import random_region_graph
from urbanrep.minibatch import MiniBatchConfig, RegionSampler, train_minibatch
from urbanrep.network import ModelConfig
from urbanrep.train import TrainConfig


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
    res = train_minibatch(nyc_graph, ModelConfig(expert=ExpertConfig(hidden_channels=32, out_channels=16)), tc,
                          MiniBatchConfig(batch_size=64, num_neighbors=(5, 5)))
    n = nyc_graph["region"].num_nodes
    assert res.embeddings.shape == (n, 16) and np.isfinite(res.embeddings).all()
    assert res.fusion_weights.shape == (n, len(res.modalities))
    assert len(res.history) == 2 and all(np.isfinite(r["total"]) for r in res.history)
    assert list(res.embeddings_frame().index) == list(nyc_graph.region_ids)
    again = train_minibatch(nyc_graph, ModelConfig(expert=ExpertConfig(hidden_channels=32, out_channels=16)), tc,
                            MiniBatchConfig(batch_size=64, num_neighbors=(5, 5), inference="sampled",
                                            inference_batch_size=50))
    assert np.allclose(again.history[-1]["total"], res.history[-1]["total"])  # seeded
    assert again.embeddings.shape == (n, 16) and np.isfinite(again.embeddings).all()


def test_minibatch_config_checked() -> None:
    with pytest.raises(ConfigError):
        MiniBatchConfig(num_neighbors=())
    with pytest.raises(ConfigError):
        MiniBatchConfig(batch_size=0)


@pytest.mark.slow
def test_minibatch_100k_regions() -> None:
    g = random_region_graph(100_000, ("poi", "mobility", "landuse"), seed=0)
    res = train_minibatch(g, ModelConfig(expert=ExpertConfig(hidden_channels=16, out_channels=16)),
                          TrainConfig(epochs=1, num_threads=1),
                          MiniBatchConfig(batch_size=16384, num_neighbors=(3, 2)))
    assert res.embeddings.shape == (100_000, 16) and np.isfinite(res.embeddings).all()
    assert np.isfinite(res.history[-1]["total"])
