"""In-harness peer models (experiments/peers): inputs, shapes, determinism, any subset of modalities."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import grid_bundle
from urbanrep.bundle import Aggregate, CityBundle


def _city(n: int = 4) -> CityBundle:
    """A grid city with POIs, an OD matrix and land-use counts."""
    b = grid_bundle(n)
    rng = np.random.default_rng(1)
    lu = pd.DataFrame(rng.integers(0, 5, size=(n * n, 3)).astype(float), columns=["res", "com", "park"])
    lu.insert(0, "region_id", b.regions["region_id"].to_numpy())
    return replace(b, aggregates={**b.aggregates, "lu": Aggregate("lu", "landuse", "vector", lu)})


def _graph(bundle: CityBundle):
    from urbanrep.graphs import GraphConfig, build_graph

    return build_graph(bundle, GraphConfig())[0]


@pytest.fixture(scope="module")
def city() -> CityBundle:
    return _city()


def test_inputs_recover_raw_counts_and_od(city: CityBundle) -> None:
    from experiments.peers.inputs import count_view, knn_similarity_edges, od_matrix

    data = _graph(city)
    od = od_matrix(data)
    want, _ = city.aggregates["od"].dense(city.region_ids)
    np.testing.assert_allclose(od, want[0], rtol=1e-5)
    lu = count_view(data, "landuse")
    raw, _ = city.aggregates["lu"].dense(city.region_ids)
    assert lu is not None
    np.testing.assert_allclose(lu.counts, raw, rtol=1e-5, atol=1e-5)
    poi = count_view(data, "poi")
    assert poi is not None and poi.counts.shape[0] == 16 and poi.counts.sum() == pytest.approx(50, rel=1e-5)
    e = knn_similarity_edges(np.eye(4) + 0.5, 2)
    assert {tuple(p) for p in e.T} >= {(i, i) for i in range(4)}
    assert {tuple(p) for p in e.T} == {tuple(p) for p in e[::-1].T}  # symmetric


def test_softmax_pool_gradient() -> None:
    from experiments.peers.hafusion import _SoftmaxPool

    torch.manual_seed(0)
    a = torch.rand(1, 5, 5, dtype=torch.double, requires_grad=True)
    s = torch.randn(3, dtype=torch.double, requires_grad=True)
    b = torch.randn(3, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(_SoftmaxPool.apply, (a, s, b))
    e = s.view(1, 3, 1, 1) * a[:, None] + b.view(1, 3, 1, 1)
    torch.testing.assert_close(_SoftmaxPool.apply(a, s, b), (e.softmax(-1) * e).sum(-1))


@pytest.mark.parametrize("peer", ["hafusion", "hrep"])
def test_peer_shape_and_determinism(city: CityBundle, peer: str) -> None:
    from experiments.peers import PEERS, fit_peer

    data = _graph(city)
    a = fit_peer(peer, data, seed=0, epochs=2)
    b = fit_peer(peer, city, seed=0, epochs=2)  # a bundle works too
    c = fit_peer(peer, data, seed=1, epochs=2)
    assert a.shape == (16, 144) and list(a.index) == list(city.region_ids) and a.index.name == "region_id"
    assert np.isfinite(a.to_numpy()).all()
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a.to_numpy(), c.to_numpy())
    assert a.attrs["peer"]["epochs"] == 2 and a.attrs["peer"]["dropped_views"] == []
    assert len(a.attrs["peer"]["losses"]) == 2 and a.attrs["peer"]["loss_last"] == a.attrs["peer"]["losses"][-1]
    assert PEERS[peer].default_epochs == 2000


@pytest.mark.parametrize(("peer", "keep", "views"), [
    ("hafusion", "poi", ["poi"]),
    ("hafusion", "landuse", ["landuse"]),
    ("hafusion", "mobility", ["mobility"]),
    ("hrep", "landuse", ["adjacent"]),
    ("hrep", "poi", ["adjacent", "poi"]),
])
def test_peer_runs_on_any_subset(city: CityBundle, peer: str, keep: str, views: list[str],
                                 caplog: pytest.LogCaptureFixture) -> None:
    from experiments.peers import fit_peer

    aggs = {k: a for k, a in city.aggregates.items() if a.modality == keep}
    sub = replace(city, aggregates=aggs, pois=city.pois if keep == "poi" else None)
    with caplog.at_level(logging.INFO, logger="experiments.peers"):
        emb = fit_peer(peer, _graph(sub), seed=0, epochs=2)
    assert emb.shape == (16, 144) and np.isfinite(emb.to_numpy()).all()
    assert emb.attrs["peer"]["views"] == views
    assert "dropped" in caplog.text


def test_unknown_peer_and_no_view(city: CityBundle) -> None:
    from experiments.peers import fit_peer

    with pytest.raises(KeyError, match="unknown peer"):
        fit_peer("nope", city, seed=0, epochs=1)
    bare = replace(city, aggregates={}, pois=None, targets=None)
    with pytest.raises(ValueError, match="HAFusion needs"):
        fit_peer("hafusion", _graph(bare), seed=0, epochs=1)


def test_hafusion_checkpointing_keeps_gradients() -> None:
    from experiments.peers.hafusion import HAFusionConfig, HAFusionNet

    cfg = HAFusionConfig(intra_blocks=2, inter_blocks=1, region_blocks=2, heads=2, view_dim=4, memory=6,
                         edge_channels=3, feedforward=16)
    xs = {"poi": torch.rand(12, 5), "mobility": torch.rand(12, 12)}
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        net = HAFusionNet({"poi": 5, "mobility": 12}, 12, 12, cfg, 2, checkpoint=ckpt)
        emb, dec = net(xs)
        (emb.square().sum() + sum(d.sum() for d in dec.values())).backward()
        grads.append([p.grad.clone() for p in net.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)
