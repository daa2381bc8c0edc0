"""RegionModel, spatially-aware fusion and the losses: shapes, equivariance, masking, switches."""

from __future__ import annotations

import copy
import dataclasses
import logging
import math

import pytest
import torch

from urbanrep.errors import ConfigError, GraphError
from urbanrep.experts import ExpertConfig, MoEConfig
from urbanrep.experts.base import masked_standardize
from urbanrep.experts.testing import permute_regions, random_region_graph
from urbanrep.fusion import (
    FusionConfig,
    LossConfig,
    SpatialFusion,
    augment_graph,
    info_nce,
    mobility_reconstruction_loss,
    near_pairs,
    positional_encoding,
)
from urbanrep.graphs.schema import ADJACENT, IMAGE, REGION, feature_key, mask_key, validate_graph
from urbanrep.network import GraphMetadata, ModelConfig, RegionModel

ALL = ("poi", "mobility", "landuse", "road", "remote_sensing", "street_view")
# One member with the views contrast: the single-member model these tests were written for (the
# default's three members and cross contrast are covered in test_fusion_information.py).
TINY = ModelConfig(expert=ExpertConfig(hidden_channels=16, out_channels=8, num_layers=1, heads=2),
                   fusion=FusionConfig(hidden_channels=8), projection_channels=8, ensemble=1,
                   loss=LossConfig(fusion_weight=1.0, fusion_contrast="views"))

#: Every ablation / option switch of the model, as ModelConfig overrides of TINY.
ABLATIONS: dict[str, dict] = {
    "default": {},
    "uniform_experts": {"uniform_experts": True},
    "global_fusion": {"fusion": FusionConfig(mode="global", hidden_channels=8)},
    "fusion_no_context": {"fusion": FusionConfig(hidden_channels=8, pos_frequencies=0, use_neighbors=False)},
    "shared_experts_softmax": {"moe": MoEConfig(num_shared=2)},
    "shared_experts_topk": {"moe": MoEConfig(num_shared=2, routing="topk", top_k=1)},
    "uniform_with_shared": {"uniform_experts": True, "moe": MoEConfig(num_shared=1)},
}


def tiny(**overrides) -> ModelConfig:
    """TINY with fields (or LossConfig fields, prefixed ``loss_``) replaced."""
    loss = {k[5:]: v for k, v in overrides.items() if k.startswith("loss_")}
    rest = {k: v for k, v in overrides.items() if not k.startswith("loss_")}
    cfg = dataclasses.replace(TINY, **rest)
    return dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, **loss)) if loss else cfg


@pytest.fixture(scope="module")
def synth():
    """40 regions with all six modalities, per-slice flows and some masked regions."""
    return random_region_graph(40, ALL, seed=5, num_slices=3, images_per_region=2.0, mask_rate=0.2)


def _model(cfg: ModelConfig, data, seed: int = 0) -> RegionModel:
    torch.manual_seed(seed)
    return RegionModel(cfg, GraphMetadata.from_data(data))


def test_model_output_shapes_and_fusion_weights(nyc):
    model = _model(TINY, nyc).eval()
    with torch.no_grad():
        out = model(nyc)
    n, mods = 180, ("poi", "mobility", "landuse", "remote_sensing")
    assert model.modalities == mods and out.modalities == mods
    assert out.embedding.shape == (n, 8) and torch.isfinite(out.embedding).all()
    assert out["fusion_weights"].shape == (n, 4)
    for m in mods:
        assert out.modality_embeddings[m].shape == (n, 8)
        assert out.masks[m].dtype == torch.bool and out.masks[m].shape == (n,)
        assert out.gates[m].shape == (n, 1)
    mask = torch.stack([out.masks[m] for m in mods], 1)
    w = out.fusion_weights
    assert (w[~mask] == 0).all() and (w >= 0).all()
    torch.testing.assert_close(w.sum(1)[mask.any(1)], torch.ones(int(mask.any(1).sum())))
    # the fused embedding is the weighted sum of the modality embeddings
    z = torch.stack([out.modality_embeddings[m] for m in mods], 1)
    torch.testing.assert_close(out.embedding, (w.unsqueeze(-1) * z).sum(1))


@pytest.mark.parametrize("name", list(ABLATIONS))
def test_model_is_region_permutation_equivariant(synth, name):
    model = _model(tiny(**ABLATIONS[name]), synth).eval()
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = model(synth)
        out_p = model(validate_graph(permute_regions(synth, perm)))
    assert out.embedding.shape == (40, 8) and torch.isfinite(out.embedding).all()
    assert out.fusion_weights.shape == (40, len(ALL))
    torch.testing.assert_close(out_p.embedding, out.embedding[perm], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out_p.fusion_weights, out.fusion_weights[perm], atol=1e-5, rtol=1e-4)
    for m in ALL:
        torch.testing.assert_close(out_p.gates[m], out.gates[m][perm], atol=1e-5, rtol=1e-4)


def _fusion_inputs(n: int = 30, m: int = 3, c: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, m, c, generator=g)
    mask = torch.rand(n, m, generator=g) > 0.25
    mask[0] = False  # a region without any modality
    mask[1] = torch.tensor([True, False, False])  # a region with a single modality
    src = torch.randint(0, n, (4 * n,), generator=g)
    dst = torch.randint(0, n, (4 * n,), generator=g)
    keep = src != dst
    ei = torch.stack([torch.cat([src[keep], dst[keep]]), torch.cat([dst[keep], src[keep]])])
    pos = torch.rand(n, 2, generator=g) * 5000.0
    return z, mask, ei, pos


@pytest.mark.parametrize("mode", ["spatial", "global"])
def test_fusion_shapes_masking_and_equivariance(mode):
    z, mask, ei, pos = _fusion_inputs()
    torch.manual_seed(0)
    fusion = SpatialFusion(3, 8, hidden_channels=16, mode=mode).eval()
    torch.nn.init.normal_(fusion.global_logits)  # a non-uniform global weighting
    with torch.no_grad():
        fused, w = fusion(z, mask, ei, pos)
        perm = torch.randperm(30, generator=torch.Generator().manual_seed(1))
        inv = torch.empty_like(perm)
        inv[perm] = torch.arange(30)
        fused_p, w_p = fusion(z[perm], mask[perm], inv[ei], pos[perm])
    assert fused.shape == (30, 8) and w.shape == (30, 3)
    some = mask.any(1)
    assert not some[0] and some[1:].all()
    assert (w[some][~mask[some]] == 0).all()  # absent modalities get no weight where any is present
    # no modality at all: every modality's context-only output is used, weights still sum to 1
    assert (w[0] > 0).all() and fused[0].abs().sum() > 0
    expected0 = (w[0].unsqueeze(-1) * z[0]).sum(0)
    torch.testing.assert_close(fused[0], expected0)
    torch.testing.assert_close(w[1], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(w.sum(1), torch.ones(30))
    torch.testing.assert_close(fused_p, fused[perm], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(w_p, w[perm], atol=1e-5, rtol=1e-4)


def test_fusion_weights_are_region_specific_only_in_spatial_mode():
    """Same modality embeddings everywhere: spatial weights still vary with location, global ones do not."""
    z, _, ei, pos = _fusion_inputs()
    z = z[:1].expand(30, -1, -1).contiguous()
    mask = torch.ones(30, 3, dtype=torch.bool)
    weights = {}
    for mode in ("spatial", "global"):
        torch.manual_seed(0)
        fusion = SpatialFusion(3, 8, hidden_channels=16, mode=mode).eval()
        torch.nn.init.normal_(fusion.global_logits)
        with torch.no_grad():
            weights[mode] = fusion(z, mask, ei, pos)[1]
    assert weights["spatial"].std(0).max() > 1e-3
    torch.testing.assert_close(weights["global"], weights["global"][:1].expand(30, -1))


def test_positional_encoding_is_translation_invariant():
    pos = torch.rand(20, 2) * 1000
    pe = positional_encoding(pos, 3)
    assert pe.shape == (20, 12) and pe.abs().max() <= 1.0
    torch.testing.assert_close(positional_encoding(pos + 5e5, 3), pe, atol=1e-3, rtol=0)


@pytest.mark.parametrize("name", list(ABLATIONS))
def test_loss_parts_and_gradients(synth, name):
    cfg = tiny(**ABLATIONS[name])
    model = _model(cfg, synth).train()
    out = model(synth)
    total, parts = model.loss(synth, out, torch.Generator().manual_seed(0))
    expected = {"aggregated", "fusion", "point", "mobility", "features"}
    if cfg.moe.routing == "topk":
        expected.add("balance")
    assert set(parts) == expected
    assert torch.isfinite(total)
    w = cfg.loss
    weights = {"aggregated": w.aggregated_weight, "fusion": w.fusion_weight, "point": w.point_weight,
               "mobility": w.mobility_weight, "balance": w.balance_weight, "features": w.feature_weight}
    torch.testing.assert_close(total.detach(), sum(weights[k] * v for k, v in parts.items()))
    total.backward()
    for m in ALL:  # every expert learns from the objective
        grads = [p.grad for p in model.experts[m].dedicated.parameters() if p.grad is not None]
        assert grads and any(bool(g.abs().sum() > 0) for g in grads), m


@pytest.mark.parametrize("switch,part", [
    ("aggregated_weight", "aggregated"), ("fusion_weight", "fusion"), ("point_weight", "point"),
    ("mobility_weight", "mobility"), ("feature_weight", "features"),
])
def test_loss_switch_off(synth, switch, part):
    model = _model(tiny(**{f"loss_{switch}": 0.0}), synth)
    _, parts = model.loss(synth, model(synth), torch.Generator().manual_seed(0))
    assert part not in parts and parts


def test_optional_losses_and_fusion_contrast(synth):
    cfg = tiny(loss_poi_similarity_weight=0.5, loss_landuse_similarity_weight=0.5, loss_fusion_contrast="modality")
    model = _model(cfg, synth)
    total, parts = model.loss(synth, model(synth), torch.Generator().manual_seed(0))
    assert {"poi_similarity", "landuse_similarity", "fusion"} <= set(parts)
    assert torch.isfinite(total)


def test_retention_target_both_adds_linear_counts(nyc, caplog):
    """``feature_target='both'``: log-scale target plus the count columns back on a linear scale."""
    model = _model(tiny(loss_feature_target="both"), nyc)
    mask = nyc[REGION][mask_key("poi")]
    target = model.retention_target(nyc, "poi", mask)
    x = nyc[REGION][feature_key("poi")]
    names = nyc.feature_names["poi"]
    assert target.shape == (x.size(0), 2 * x.size(1))
    j = names.index(next(n for n in names if n.startswith("log1p:") and float(x[mask, names.index(n)].std()) > 0))
    linear = torch.expm1(x[mask, j].double())
    expected = (linear - linear.mean()) / linear.std(unbiased=False)
    assert torch.allclose(target[mask, x.size(1) + j].double(), expected, atol=1e-4)
    share = next(i for i, n in enumerate(names) if n.startswith("share:") and float(x[mask, i].std()) > 0)
    s = x[mask, share].double()
    assert torch.allclose(target[mask, x.size(1) + share].double(), (s - s.mean()) / s.std(unbiased=False),
                          atol=1e-4)  # shares are kept as they are
    assert model.feature_heads["poi"].out_features == 2 * x.size(1)
    total, parts = model.loss(nyc, model(nyc), torch.Generator().manual_seed(0))
    assert "features" in parts and torch.isfinite(total)
    bare = copy.copy(nyc)
    del bare.feature_names
    with caplog.at_level(logging.WARNING, logger="urbanrep.network"):
        plain = model.retention_target(bare, "poi", mask)
    assert "no feature_names" in caplog.text and "poi" in nyc.feature_names
    assert torch.allclose(plain[:, x.size(1):], masked_standardize(x, mask))
    with pytest.raises(ConfigError, match="feature_target"):
        LossConfig(feature_target="linear")


def test_all_losses_off_gives_zero(synth):
    cfg = tiny(loss_aggregated_weight=0.0, loss_fusion_weight=0.0, loss_point_weight=0.0, loss_mobility_weight=0.0,
               loss_feature_weight=0.0)
    model = _model(cfg, synth)
    total, parts = model.loss(synth, model(synth))
    assert parts == {} and float(total.detach()) == 0.0


def test_loss_subsamples_large_graphs(synth):
    """With max_nodes below N the dense loss terms run on a seeded subset and stay finite."""
    model = _model(tiny(loss_max_nodes=16, loss_poi_similarity_weight=1.0), synth).eval()
    out = model(synth)
    t1, _ = model.loss(synth, out, torch.Generator().manual_seed(3))
    t2, _ = model.loss(synth, out, torch.Generator().manual_seed(3))
    t3, _ = model.loss(synth, out, torch.Generator().manual_seed(4))
    assert torch.isfinite(t1) and float(t1.detach()) == float(t2.detach()) != float(t3.detach())
    full, _ = _model(tiny(loss_poi_similarity_weight=1.0), synth).eval().loss(synth, out)
    assert float(full.detach()) != float(t1.detach())


def test_model_modality_subset_and_missing_modalities(nyc):
    model = _model(tiny(modalities=("poi", "landuse")), nyc).eval()
    assert model.modalities == ("poi", "landuse")
    with torch.no_grad():
        out = model(nyc)
    assert out.fusion_weights.shape == (180, 2)
    with pytest.raises(ConfigError, match="road"):
        _model(tiny(modalities=("poi", "road")), nyc)
    # a graph lacking a modality the model was built for is refused with a clear message
    full = _model(TINY, nyc)
    poi_only = random_region_graph(30, ("poi",), seed=1)
    with pytest.raises(GraphError, match="lacks modalities"):
        full(poi_only)


def test_single_modality_graph(synth):
    """Singapore-like: POIs only. No aggregated contrast is possible; fusion weight is 1."""
    data = random_region_graph(30, ("poi",), seed=2, mask_rate=0.1)
    model = _model(TINY, data)
    out = model(data)
    mask = out.masks["poi"]
    torch.testing.assert_close(out.fusion_weights[:, 0], torch.ones(30))
    # regions without POIs keep the expert's context-only output (missing token + neighbours)
    torch.testing.assert_close(out.embedding[~mask], out.modality_embeddings["poi"][~mask])
    total, parts = model.loss(data, out, torch.Generator().manual_seed(0))
    assert set(parts) == {"fusion", "features"} and torch.isfinite(total)


def test_graph_metadata(synth, nyc):
    md = GraphMetadata.from_data(synth)
    assert md.modalities == ALL and md.num_slices == 3
    assert md.channels("street_view") == synth[IMAGE].x.size(1)
    assert GraphMetadata.from_dict(md.to_dict()) == md
    assert GraphMetadata.from_data(nyc).num_slices == nyc["region", "mobility", "region"].edge_attr.size(1)


def test_info_nce():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(32, 64, generator=g)
    aligned = info_nce(a, a + 0.01 * torch.randn(32, 64, generator=g), 0.2)
    shuffled = info_nce(a, a[torch.randperm(32, generator=g)], 0.2)
    assert float(aligned) < 0.5 and float(shuffled) > math.log(32)  # chance level is log(K)
    assert float(info_nce(a[:1], a[:1], 0.2)) == 0.0


def test_info_nce_exclude_drops_negatives():
    """An excluded pair leaves the softmax as if that negative were not there."""
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    none = torch.zeros(6, 6, dtype=torch.bool)
    assert float(info_nce(a, b, 0.5, none)) == pytest.approx(float(info_nce(a, b, 0.5)))
    ex = none.clone()
    ex[0, 1] = ex[1, 0] = True
    keep = [0, 2, 3, 4, 5]  # row 0's negatives without region 1
    an, bn = torch.nn.functional.normalize(a, dim=-1), torch.nn.functional.normalize(b, dim=-1)
    row0 = -torch.log_softmax(an[0] @ bn[keep].t() / 0.5, 0)[0]
    full = torch.nn.functional.cross_entropy((an @ bn.t() / 0.5).masked_fill(ex, float("-inf")), torch.arange(6),
                                             reduction="none")
    assert float(full[0]) == pytest.approx(float(row0), rel=1e-5)
    assert float(info_nce(a, b, 0.5, ex)) < float(info_nce(a, b, 0.5))  # fewer negatives, lower loss


def test_near_pairs_on_a_path():
    """Path 0-1-2-3-4: hop distances, paths through regions outside the subset, symmetry."""
    edges = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4]])  # one direction only
    one = near_pairs(edges, 5, torch.arange(5), 1)
    assert one.tolist() == [[i != j and abs(i - j) <= 1 for j in range(5)] for i in range(5)]
    two = near_pairs(edges, 5, torch.arange(5), 2)
    assert two.tolist() == [[i != j and abs(i - j) <= 2 for j in range(5)] for i in range(5)]
    sub = near_pairs(edges, 5, torch.tensor([4, 0, 2]), 2)  # 2 reaches 0 and 4 through 1 and 3
    assert sub.tolist() == [[False, False, True], [False, False, True], [True, True, False]]


def test_negative_hops_changes_only_the_contrast(synth):
    """``negative_hops`` removes near regions from the negatives of the region-level contrast terms."""
    base = _model(tiny(), synth).train()
    out = base(synth)
    _, parts = base.loss(synth, out, torch.Generator().manual_seed(0))
    near = copy.deepcopy(base)
    near.config = tiny(loss_negative_hops=1)
    total, near_parts = near.loss(synth, out, torch.Generator().manual_seed(0))
    assert torch.isfinite(total)
    assert float(near_parts["aggregated"]) < float(parts["aggregated"])
    assert float(near_parts["mobility"]) == float(parts["mobility"])
    subset = copy.deepcopy(base)
    subset.config = tiny(loss_negative_hops=2, loss_max_nodes=16)  # on a sampled subset of regions
    t, _ = subset.loss(synth, out, torch.Generator().manual_seed(0))
    assert torch.isfinite(t)
    with pytest.raises(ConfigError, match="negative_hops"):
        LossConfig(negative_hops=-1)


def test_mobility_reconstruction_loss():
    g = torch.Generator().manual_seed(0)
    src, dst = torch.randn(10, 4, generator=g), torch.randn(10, 4, generator=g)
    matching = torch.softmax(src @ dst.t(), 1) * 100  # outflows exactly as modelled
    random_od = torch.rand(10, 10, generator=g) * 100
    lm = mobility_reconstruction_loss(src, dst, matching)
    lr = mobility_reconstruction_loss(src, dst, random_od)
    assert 0.0 <= float(lm) < float(lr)
    assert float(mobility_reconstruction_loss(src, dst, torch.zeros(10, 10))) == 0.0


def test_augment_graph_is_seeded_and_leaves_input_alone(synth):
    before = {et: synth[et].edge_index.clone() for et in synth.edge_types}
    x_before = synth[REGION][feature_key("poi")].clone()
    v1 = augment_graph(synth, 0.3, 0.3, torch.Generator().manual_seed(4))
    v2 = augment_graph(synth, 0.3, 0.3, torch.Generator().manual_seed(4))
    for et in synth.edge_types:
        assert torch.equal(synth[et].edge_index, before[et])
        assert torch.equal(v1[et].edge_index, v2[et].edge_index)
    assert torch.equal(synth[REGION][feature_key("poi")], x_before)
    kept = v1[ADJACENT].edge_index.size(1) / before[ADJACENT].size(1)
    assert 0.5 < kept < 0.9
    assert torch.equal(v1["image", "in_region", "region"].edge_index, before[("image", "in_region", "region")])
    assert not torch.equal(v1[REGION][feature_key("poi")], x_before)
    assert torch.equal(v1[REGION][mask_key("poi")], synth[REGION][mask_key("poi")])


def test_config_validation():
    with pytest.raises(ConfigError):
        ModelConfig(modalities=("lidar",))
    with pytest.raises(ConfigError):
        FusionConfig(mode="attention")
    with pytest.raises(ConfigError):
        LossConfig(aggregated_weight=-1.0)
    with pytest.raises(ConfigError):
        LossConfig(fusion_contrast="nodes")


def test_masked_region_training(synth):
    """``loss.region_mask`` hides each modality from a seeded share of the regions in the forward
    pass (features zeroed, mask False; the input graph untouched) while input retention still asks
    for their features; off (0) the step sees ``data`` itself."""
    from urbanrep.fusion.losses import hide_regions

    x_before = synth[REGION][feature_key("poi")].clone()
    m_before = synth[REGION][mask_key("poi")].clone()
    v1 = hide_regions(synth, 0.5, torch.Generator().manual_seed(3))
    v2 = hide_regions(synth, 0.5, torch.Generator().manual_seed(3))
    assert torch.equal(synth[REGION][feature_key("poi")], x_before)
    assert torch.equal(synth[REGION][mask_key("poi")], m_before)
    for m in ("poi", "mobility", "landuse"):
        hidden = synth[REGION][mask_key(m)] & ~v1[REGION][mask_key(m)]
        assert torch.equal(v1[REGION][mask_key(m)], v2[REGION][mask_key(m)])
        assert 5 <= int(hidden.sum()) <= 30
        assert not (v1[REGION][mask_key(m)] & ~synth[REGION][mask_key(m)]).any()  # never reveals
        assert float(v1[REGION][feature_key(m)][hidden].abs().sum()) == 0.0
    off = _model(TINY, synth)
    assert off.training_view(synth, torch.Generator().manual_seed(0)) is synth
    model = _model(tiny(loss_region_mask=0.5), synth)
    gen = torch.Generator().manual_seed(0)
    out = model(model.training_view(synth, gen))
    total, parts = model.loss(synth, out, gen)
    assert torch.isfinite(total) and "features" in parts
    total.backward()
    with pytest.raises(ConfigError, match="region_mask"):
        LossConfig(region_mask=1.0)


def test_contrast_on_part_of_the_channels(synth):
    """``loss.contrast_channels=k``: the region-level contrast reads only the first ``k`` channels of
    the embeddings it compares (the rest do not change it); wider than the embedding is refused."""
    k = 4
    model = _model(tiny(loss_contrast_channels=k), synth).eval()
    with torch.no_grad():
        out = model(synth)
        bumped = dataclasses.replace(out, modality_embeddings={
            m: torch.cat([z[:, :k], z[:, k:] + 1.0], 1) for m, z in out.modality_embeddings.items()})
        gen = torch.Generator().manual_seed(0)
        agg = model.loss(synth, out, gen)[1]["aggregated"]
        gen = torch.Generator().manual_seed(0)
        assert torch.equal(model.loss(synth, bumped, gen)[1]["aggregated"], agg)
        assert model.contrast_head[0].in_features == k
    assert _model(TINY, synth).contrast_width == TINY.expert.out_channels
    with pytest.raises(ConfigError, match="contrast_channels"):
        tiny(loss_contrast_channels=TINY.expert.out_channels + 1)
    with pytest.raises(ConfigError, match="contrast_channels"):
        LossConfig(contrast_channels=-1)


def test_neighbourhood_retention(synth):
    """``loss.context_weight``: a context head decodes the mean retention target of the adjacent
    regions with data; :func:`neighbour_mean` counts either edge direction once and skips regions
    without data."""
    from urbanrep.fusion.losses import neighbour_mean

    x = torch.tensor([[1.0], [2.0], [4.0], [8.0]])
    mask = torch.tensor([True, True, False, True])
    ei = torch.tensor([[0, 1, 1, 2, 0, 3], [1, 0, 2, 1, 0, 2]])  # 0-1 both ways, 1-2, 2-3, a self loop
    mean, has = neighbour_mean(x, mask, ei)
    assert has.tolist() == [True, True, True, False]  # region 3's only neighbour (2) has no data
    assert mean[:, 0].tolist() == [2.0, 1.0, 5.0, 0.0]
    model = _model(tiny(loss_context_weight=1.0), synth)
    assert set(model.context_heads) == set(model.feature_heads)
    total, parts = model.loss(synth, model(synth), torch.Generator().manual_seed(0))
    assert torch.isfinite(parts["context"]) and float(parts["context"]) > 0
    total.backward()
    assert model.context_heads["poi"].weight.grad is not None
    assert not _model(TINY, synth).context_heads
    with pytest.raises(ConfigError, match="context_weight"):
        LossConfig(context_weight=-1.0)
