"""Fusion weights that track information: the noise prior, flow-profile retention, cross contrast."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from urbanrep.experts.flows import flow_profile_components
from urbanrep.experts.testing import random_region_graph, with_noise_modality
from urbanrep.fusion.information import modality_coherence, noise_prior, spatial_coherence
from urbanrep.fusion.losses import LossConfig
from urbanrep.fusion.spatial import FusionConfig
from urbanrep.graphs.schema import ADJACENT, MODALITY_EDGE, REGION
from urbanrep.network import ModelConfig
from urbanrep.smoothing import scale_width
from urbanrep.train import TrainConfig, train


def _grid_edges(side: int) -> torch.Tensor:
    idx = torch.arange(side * side).view(side, side)
    pairs = [torch.stack([idx[:, :-1].flatten(), idx[:, 1:].flatten()]),
             torch.stack([idx[:-1, :].flatten(), idx[1:, :].flatten()])]
    e = torch.cat(pairs, 1)
    return torch.cat([e, e.flip(0)], 1)


def test_coherence_separates_smooth_fields_from_noise():
    side = 20
    edges = _grid_edges(side)
    yy, xx = torch.meshgrid(torch.linspace(0, 3, side), torch.linspace(0, 3, side), indexing="ij")
    smooth = torch.stack([torch.sin(xx) + yy, torch.cos(yy) * xx], -1).view(-1, 2)
    noise = torch.randn(side * side, 16, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(side * side, dtype=torch.bool)
    assert float(spatial_coherence(smooth, mask, edges, log_inputs=False)) > 0.9
    assert float(spatial_coherence(noise, mask, edges, log_inputs=False)) < 0.05
    prior = noise_prior(torch.tensor([0.9, 0.0, 0.05]))
    assert prior.tolist() == pytest.approx([1.0, 0.01, 0.5])
    excluded = noise_prior(torch.tensor([0.9, 0.02]), torch.tensor([40.0, 1.0]))
    assert excluded.tolist() == pytest.approx([1.0, 1e-6])
    alone = noise_prior(torch.tensor([0.02]), torch.tensor([1.0]))  # nothing to prefer: not excluded
    assert alone.tolist() == pytest.approx([0.2])


def test_coherence_of_real_modalities_and_a_noise_modality(nyc):
    noisy = with_noise_modality(nyc)
    mods = tuple(noisy.modalities)
    c, z = modality_coherence(noisy, mods)
    coh, sig = dict(zip(mods, c.tolist(), strict=True)), dict(zip(mods, z.tolist(), strict=True))
    assert coh["road"] < 0.05 and sig["road"] < 3  # the noise slot
    assert all(coh[m] > 0.1 and sig[m] > 3 for m in mods if m != "road")
    prior = dict(zip(mods, noise_prior(c, z).tolist(), strict=True))
    assert prior["road"] < 1e-5 and all(prior[m] == 1.0 for m in mods if m != "road")


def test_noise_modality_gets_almost_no_fusion_weight(nyc):
    """A pure-noise modality (same mask as POI) ends with a mean fusion weight <= 0.05."""
    noisy = with_noise_modality(nyc, seed=1)
    # One member (each member of the default ensemble has its own fusion; the full default at its
    # full budget is checked by experiments/quality_checks.py).
    res = train(noisy, ModelConfig(ensemble=1, fusion=FusionConfig(prior="coherence")),
                TrainConfig(epochs=40, seed=0, num_threads=1))
    weights = dict(zip(res.modalities, res.fusion_weights.mean(0).tolist(), strict=True))
    assert weights["road"] <= 0.05, weights


def test_flow_components_exact_and_randomised_agree(monkeypatch):
    import urbanrep.experts.flows as flows

    data = random_region_graph(300, modalities=("mobility",), seed=3)
    et = MODALITY_EDGE["mobility"]
    ei, w = data[et].edge_index, data[et].edge_weight
    exact = flow_profile_components(ei, w, 300, 8)
    monkeypatch.setattr(flows, "EXACT_SVD_MAX_NODES", 10)
    approx = flow_profile_components(ei, w, 300, 8)
    again = flow_profile_components(ei, w, 300, 8)
    assert exact.shape == approx.shape == (300, 8)
    assert torch.equal(approx, again)  # seeded: deterministic
    # about the same leading subspace (random flows have a flat spectrum, so not exactly)
    q1, q2 = torch.linalg.qr(exact[:, :4].double()).Q, torch.linalg.qr(approx[:, :4].double()).Q
    cos = torch.linalg.svdvals(q1.t() @ q2)
    assert cos.max() > 0.95 and cos.mean() > 0.85
    small = flow_profile_components(ei[:, :3] % 3, w[:3], 3, 8)
    assert small.shape == (3, 8) and torch.equal(small[:, 2:], torch.zeros(3, 6))


@pytest.mark.parametrize("contrast", ["cross", "views"])
def test_flow_retention_and_cross_contrast_train(contrast):
    data = random_region_graph(60, modalities=("poi", "mobility", "landuse"), seed=0)
    mc = ModelConfig(output_position=0, loss=LossConfig(flow_components=8, fusion_weight=1.0, fusion_contrast=contrast),
                     fusion=FusionConfig(prior="coherence"), ensemble=1)
    res = train(data, mc, TrainConfig(epochs=3, seed=0, num_threads=1))
    assert res.embeddings.shape == (60, 64 + 2 * scale_width(60, 64, 8))
    assert "features" in res.history[-1] and "fusion" in res.history[-1]
    one = random_region_graph(60, modalities=("poi",), seed=0)
    res1 = train(one, replace(mc, loss=replace(mc.loss, fusion_contrast="cross")), TrainConfig(epochs=2, seed=0))
    assert res1.embeddings.shape == (60, 64 + 2 * scale_width(60, 64, 8))
    assert ADJACENT in data.edge_types and data[REGION].num_nodes == 60


def test_ensemble_concatenates_members_and_round_trips(tmp_path):
    from urbanrep.train import load_model, save_model

    data = random_region_graph(40, modalities=("poi", "mobility"), seed=1)
    mc = ModelConfig(ensemble=2, ensemble_output="concat", loss=LossConfig(fusion_weight=0.0), output_position=0,
                     output_smoothing=0.0,
                     output_scales=0)
    res = train(data, mc, TrainConfig(epochs=3, seed=0, num_threads=1))
    assert res.embeddings.shape == (40, 128) and res.model.out_channels == 128
    assert res.fusion_weights.shape == (40, 2)
    halves = res.embeddings[:, :64], res.embeddings[:, 64:]
    assert not torch.allclose(torch.as_tensor(halves[0]), torch.as_tensor(halves[1]))  # distinct members
    save_model(res.model, tmp_path / "model.pt", TrainConfig())
    again = load_model(tmp_path / "model.pt")
    again.eval()
    with torch.no_grad():
        emb = again.final_embedding(again(data).embedding.numpy(), data)
    assert emb.shape == (40, 128)
    assert torch.allclose(torch.as_tensor(emb), torch.as_tensor(res.embeddings), atol=1e-5)


def test_align_members_recovers_a_rotated_copy():
    import numpy as np

    from urbanrep.network import align_members

    rng = np.random.default_rng(0)
    base = rng.normal(size=(50, 6))
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    noise = 0.01 * rng.normal(size=(50, 6))
    emb = np.concatenate([base, base @ q + noise, base @ q.T - noise], 1).astype(np.float32)
    got = align_members(emb, 3)
    assert got.shape == (50, 6) and got.dtype == np.float32
    centred = base - base.mean(0)
    # the consensus is the shared embedding up to one rotation: all pairwise distances kept
    d_got = np.linalg.norm(got[:, None] - got[None], axis=-1)
    d_ref = np.linalg.norm(centred[:, None] - centred[None], axis=-1)
    assert np.allclose(d_got, d_ref, atol=0.05)
    assert align_members(emb[:, :6], 1) is not None and align_members(emb, 1).shape == (50, 18)


def test_aligned_ensemble_output_is_one_member_wide(tmp_path):
    from urbanrep.model import embed_graph
    from urbanrep.train import load_model, save_model

    data = random_region_graph(40, modalities=("poi", "mobility"), seed=1)
    mc = ModelConfig(ensemble=3, ensemble_output="aligned", loss=LossConfig(fusion_weight=0.0), output_scales=0,
                     output_position=0)
    res = train(data, mc, TrainConfig(epochs=2, seed=0, num_threads=1))
    assert res.embeddings.shape == (40, 64) and res.model.row_channels == 64
    save_model(res.model, tmp_path / "model.pt", TrainConfig())
    emb, _ = embed_graph(load_model(tmp_path / "model.pt"), data)
    assert emb.shape == (40, 64)
    assert torch.allclose(torch.as_tensor(emb.to_numpy()), torch.as_tensor(res.embeddings), atol=1e-4)
    with pytest.raises(Exception, match="ensemble_output"):
        ModelConfig(ensemble_output="sum")


def test_structure_loss_is_zero_when_the_embedding_keeps_the_input_geometry():
    from urbanrep.fusion.losses import structure_loss

    x = torch.randn(30, 5, generator=torch.Generator().manual_seed(0))
    x = x - x.mean(0)
    mask = torch.ones(30, dtype=torch.bool)
    assert float(structure_loss(x, [(x, mask, torch.tensor(1.0))])) < 1e-10
    other = torch.randn(30, 5, generator=torch.Generator().manual_seed(1))
    assert float(structure_loss(other, [(x, mask, torch.tensor(1.0))])) > 0.05
    none = torch.zeros(30, dtype=torch.bool)  # no pair shares a view: nothing to match
    assert float(structure_loss(other, [(x, none, torch.tensor(1.0))])) == 0.0
    data = random_region_graph(30, modalities=("poi", "mobility"), seed=2)
    res = train(data, ModelConfig(ensemble=1, loss=LossConfig(fusion_weight=0.0, structure_weight=1.0)),
                TrainConfig(epochs=2, seed=0, num_threads=1))
    assert "structure" in res.history[-1]


def test_decorrelation_loss_measures_redundant_columns():
    from urbanrep.fusion.losses import decorrelation_loss

    g = torch.Generator().manual_seed(0)
    base = torch.randn(500, 1, generator=g)
    assert float(decorrelation_loss(base.repeat(1, 4) * torch.tensor([1.0, -2.0, 3.0, 0.5]))) == pytest.approx(1.0, abs=1e-4)
    x = torch.randn(500, 8, generator=g)
    q, _ = torch.linalg.qr(x - x.mean(0))  # orthogonal columns spanning centred ones: uncorrelated
    assert float(decorrelation_loss(q)) < 1e-6
    with_constant = torch.cat([torch.randn(50, 3, generator=g), torch.ones(50, 1)], dim=1)
    assert torch.isfinite(decorrelation_loss(with_constant))
    assert float(decorrelation_loss(torch.randn(1, 4))) == 0.0 and float(decorrelation_loss(torch.randn(9, 1))) == 0.0
    x = torch.randn(40, 6, generator=g, requires_grad=True)
    decorrelation_loss(x).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    data = random_region_graph(30, modalities=("poi", "mobility"), seed=2)
    res = train(data, ModelConfig(ensemble=1, loss=LossConfig(decorrelation_weight=1.0)),
                TrainConfig(epochs=2, seed=0, num_threads=1))
    assert "decorrelation" in res.history[-1]
    with pytest.raises(Exception, match="decorrelation_weight"):
        LossConfig(decorrelation_weight=-1.0)


def test_flow_retention_applies_alone_or_with_others_on_request():
    from urbanrep.network import GraphMetadata, RegionModel

    data = random_region_graph(30, modalities=("poi", "mobility"), seed=3)
    meta = GraphMetadata.from_data(data)
    alone = RegionModel(ModelConfig(ensemble=1, modalities=("mobility",)), meta)
    assert alone.flow_components == LossConfig().solo_flow_components == 0  # off since round 2026-12-07ae
    asked_alone = RegionModel(ModelConfig(ensemble=1, modalities=("mobility",), loss=LossConfig(solo_flow_components=16)),
                              meta)
    assert asked_alone.flow_components == 16
    both = RegionModel(ModelConfig(ensemble=1), meta)
    assert both.flow_components == 0
    asked = RegionModel(ModelConfig(ensemble=1, loss=LossConfig(flow_components=4)), meta)
    assert asked.flow_components == 4
    res = train(data, ModelConfig(ensemble=1, modalities=("mobility",), output_position=0),
                TrainConfig(epochs=2, seed=0, num_threads=1))
    assert res.embeddings.shape == (30, 64 + 2 * scale_width(30, 64, 8))


def test_region_attention_option_attends_over_regions_with_data():
    from urbanrep.experts.moe import MoEConfig

    data = random_region_graph(30, modalities=("poi", "mobility"), seed=4)
    mc = ModelConfig(ensemble=1, moe=MoEConfig(region_attention=4))
    res = train(data, mc, TrainConfig(epochs=2, seed=0, num_threads=1))
    assert res.embeddings.shape[0] == 30 and np.isfinite(res.embeddings).all()
    again = train(data, mc, TrainConfig(epochs=2, seed=0, num_threads=1))
    np.testing.assert_array_equal(res.embeddings, again.embeddings)  # deterministic for a seed
    off = train(data, ModelConfig(ensemble=1), TrainConfig(epochs=2, seed=0, num_threads=1))
    assert not np.allclose(off.embeddings, res.embeddings)
    with pytest.raises(Exception, match="region_attention"):
        MoEConfig(region_attention=-1)
    from urbanrep.network import GraphMetadata, RegionModel

    with pytest.raises(Exception, match="must divide"):
        RegionModel(ModelConfig(ensemble=1, moe=MoEConfig(region_attention=5)), GraphMetadata.from_data(data))
