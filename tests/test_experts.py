"""Experts and the mixture gate: shapes, region-permutation equivariance, masking, registry."""

from __future__ import annotations

import pytest
import torch

from urbanrep.errors import ConfigError, GraphError
from urbanrep.experts import (
    EXPERTS,
    ExpertConfig,
    GCNStack,
    ModalityMoE,
    MoEConfig,
    SharedExpert,
    StreetViewExpert,
    UniformExpert,
    expert_from_config,
    get_expert,
    load_balancing_loss,
)
from urbanrep.experts.mobility import flow_normalize
from urbanrep.experts.testing import graph_from_bundle, permute_regions, random_region_graph
from urbanrep.graphs.schema import MODALITY_EDGE, feature_key, mask_key, validate_graph
from urbanrep.network import GraphMetadata

CFG = ExpertConfig(hidden_channels=32, out_channels=16, num_layers=2, dropout=0.1, heads=4)
ALL = ("poi", "mobility", "landuse", "road", "remote_sensing", "street_view")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: these graphs are tiny, and on a shared 2-core machine two OpenMP
    threads waiting for each other make every call many times slower."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture(scope="module")
def nyc_graph(nyc_bundle):
    """NYC-180 region graph from the real bundle aggregates (data root, else the embedded copy)."""
    return graph_from_bundle(nyc_bundle)


@pytest.fixture(scope="module")
def synth_graph():
    """A small generated graph with all six modalities and per-slice flows."""
    return random_region_graph(50, ALL, seed=3, num_slices=4, images_per_region=2.0, mask_rate=0.2)


def _build(name: str, data) -> torch.nn.Module:
    md = GraphMetadata.from_data(data)
    torch.manual_seed(0)
    if name in ("shared", "uniform"):
        cls = SharedExpert if name == "shared" else UniformExpert
        return expert_from_config(cls, md.channels("mobility"), CFG, modality="mobility").eval()
    return expert_from_config(get_expert(name), md.channels(name), CFG, num_slices=md.num_slices).eval()


def _assert_equivariant(fn, data, atol=1e-5):
    n = data["region"].num_nodes
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = fn(data)
        out_p = fn(validate_graph(permute_regions(data, perm)))
    assert out.shape[0] == n
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out_p, out[perm], atol=atol, rtol=1e-4)
    return out


def test_fixture_graphs_are_schema_valid(nyc_graph, synth_graph):
    assert list(nyc_graph.modalities) == ["poi", "mobility", "landuse", "remote_sensing"]
    assert nyc_graph["region"].num_nodes == 180
    assert list(synth_graph.modalities) == list(ALL)
    validate_graph(nyc_graph)
    validate_graph(synth_graph)


def test_registry():
    assert set(ALL) | {"shared", "uniform"} <= set(EXPERTS)
    assert get_expert("poi").modality == "poi"
    with pytest.raises(ConfigError, match="registered experts"):
        get_expert("lidar")


@pytest.mark.parametrize("name", ["poi", "mobility", "landuse", "remote_sensing"])
def test_expert_shape_and_equivariance_on_nyc(nyc_graph, name):
    expert = _build(name, nyc_graph)
    out = _assert_equivariant(expert, nyc_graph)
    assert out.shape == (180, CFG.out_channels)


@pytest.mark.parametrize("name", [*ALL, "shared", "uniform"])
def test_expert_shape_and_equivariance_synthetic(synth_graph, name):
    expert = _build(name, synth_graph)
    out = _assert_equivariant(expert, synth_graph)
    assert out.shape == (50, CFG.out_channels)
    expert.reset_parameters()
    with torch.no_grad():
        assert not torch.allclose(expert(synth_graph), out)


@pytest.mark.parametrize("name", ["poi", "mobility", "landuse", "road", "remote_sensing"])
def test_masked_rows_never_read(synth_graph, name):
    """A region whose modality is masked gives the same output whatever its (zero) row holds."""
    expert = _build(name, synth_graph)
    data = synth_graph.clone()
    mask = data["region"][mask_key(name)]
    assert (~mask).any()
    with torch.no_grad():
        ref = expert(data)
        x = data["region"][feature_key(name)].clone()
        x[~mask] = 1e6
        data["region"][feature_key(name)] = x
        torch.testing.assert_close(expert(data), ref)


def test_masked_region_gets_missing_token(synth_graph):
    """Two masked regions with identical neighbourhoods would be equal: check the token is used."""
    expert = _build("remote_sensing", synth_graph)
    x, mask = expert.features(synth_graph)
    h = expert.encoder(x, mask)
    missing = h[~mask]
    assert torch.allclose(missing, missing[0].expand_as(missing))


def test_street_view_mask_and_pooling(synth_graph):
    expert = _build("street_view", synth_graph)
    assert isinstance(expert, StreetViewExpert)
    mask = expert.region_mask(synth_graph)
    members = synth_graph["image", "in_region", "region"].edge_index[1].unique()
    assert mask.sum() == members.numel()
    # removing all images of one region changes that region's pooled vector to the missing token
    data = synth_graph.clone()
    r = int(members[0])
    ei = data["image", "in_region", "region"].edge_index
    keep = ei[1] != r
    data["image", "in_region", "region"].edge_index = ei[:, keep]
    data["image", "in_region", "region"].edge_weight = data["image", "in_region", "region"].edge_weight[keep]
    with torch.no_grad():
        pooled = expert.pool_regions(data, expert.encode_images(data["image"].x, expert.image_edges(data)))
    torch.testing.assert_close(pooled[r], expert.missing)
    assert not expert.region_mask(data)[r]


def test_flow_normalize_rows_and_columns(nyc_graph):
    et = MODALITY_EDGE["mobility"]
    ei, w = nyc_graph[et].edge_index, nyc_graph[et].edge_weight
    out_share, in_share = flow_normalize(ei, w, 180)
    row = torch.zeros(180).index_add_(0, ei[0], out_share)
    col = torch.zeros(180).index_add_(0, ei[1], in_share)
    has_out = torch.zeros(180).index_add_(0, ei[0], w) > 0
    has_in = torch.zeros(180).index_add_(0, ei[1], w) > 0
    torch.testing.assert_close(row[has_out], torch.ones(int(has_out.sum())))
    torch.testing.assert_close(col[has_in], torch.ones(int(has_in.sum())))


def test_mobility_uses_direction(nyc_graph):
    """Reversing every OD edge changes the mobility expert's output (it is direction-aware)."""
    expert = _build("mobility", nyc_graph)
    data = nyc_graph.clone()
    et = MODALITY_EDGE["mobility"]
    data[et].edge_index = data[et].edge_index.flip(0)
    with torch.no_grad():
        assert not torch.allclose(expert(data), expert(nyc_graph), atol=1e-4)


def test_missing_feature_raises(synth_graph):
    expert = _build("poi", synth_graph)
    data = random_region_graph(20, ("landuse",), seed=0)
    with pytest.raises(GraphError, match="x_poi"):
        expert(data)


@pytest.mark.parametrize("routing,top_k", [("softmax", 1), ("topk", 1), ("topk", 2)])
def test_moe_gate(synth_graph, routing, top_k):
    md = GraphMetadata.from_data(synth_graph)
    torch.manual_seed(0)
    backbones = [GCNStack(CFG.hidden_channels, CFG.out_channels, 1, 0.0) for _ in range(2)]
    shared = [expert_from_config(SharedExpert, md.channels("poi"), CFG, modality="poi", backbone=b)
              for b in backbones]
    moe = ModalityMoE(expert_from_config(get_expert("poi"), md.channels("poi"), CFG), shared, routing, top_k).eval()
    torch.nn.init.normal_(moe.gate[1].weight, std=0.5)  # a non-uniform gate
    out = _assert_equivariant(lambda d: moe(d)[0], synth_graph)
    assert out.shape == (50, CFG.out_channels)
    with torch.no_grad():
        _, aux, gates = moe(synth_graph)
    assert gates.shape == (50, 3)
    torch.testing.assert_close(gates.sum(1), torch.ones(50))
    if routing == "topk":
        assert ((gates > 0).sum(1) == top_k).all()
        assert float(aux) >= 1.0 - 1e-6  # Switch loss is >= 1, equal when balanced
    else:
        assert float(aux) == 0.0


def test_moe_without_shared_is_the_dedicated_expert(synth_graph):
    md = GraphMetadata.from_data(synth_graph)
    torch.manual_seed(0)
    ded = expert_from_config(get_expert("landuse"), md.channels("landuse"), CFG).eval()
    moe = ModalityMoE(ded, []).eval()
    with torch.no_grad():
        torch.testing.assert_close(moe(synth_graph)[0], ded(synth_graph))


def test_load_balancing_loss_values():
    balanced = torch.tensor([[0.9, 0.1], [0.1, 0.9]])
    skewed = torch.tensor([[0.9, 0.1], [0.8, 0.2]])
    mask = torch.ones(2, dtype=torch.bool)
    assert float(load_balancing_loss(balanced, mask)) == pytest.approx(1.0)
    assert float(load_balancing_loss(skewed, mask)) > 1.5


def test_config_validation():
    with pytest.raises(ConfigError):
        ExpertConfig(hidden_channels=30, heads=4)
    with pytest.raises(ConfigError):
        ExpertConfig(dropout=1.0)
    with pytest.raises(ConfigError):
        MoEConfig(routing="hash")
    with pytest.raises(ConfigError):
        MoEConfig(num_shared=1, top_k=3)


@pytest.mark.parametrize("graph", ["nyc_graph", "synth_graph"])
def test_mobility_dense_path_equals_message_passing(request, graph, monkeypatch):
    """The dense ``[N, N]`` flow operators are an exact rewrite: same output and same gradients."""
    from urbanrep.experts import mobility

    data = request.getfixturevalue(graph)
    expert = _build("mobility", data)
    n, e = data["region"].num_nodes, data[MODALITY_EDGE["mobility"]].edge_index.size(1)

    def run():
        expert.zero_grad()
        out = expert(data)
        (out ** 2).sum().backward()
        return out.detach(), {k: p.grad.clone() for k, p in expert.named_parameters() if p.grad is not None}

    assert mobility.use_dense_flows(n, e)  # both fixtures are small, nearly complete OD graphs
    dense_out, dense_grads = run()
    monkeypatch.setattr(mobility, "DENSE_MAX_NODES", 0)
    assert not mobility.use_dense_flows(n, e)
    sparse_out, sparse_grads = run()
    torch.testing.assert_close(dense_out, sparse_out, atol=1e-5, rtol=1e-4)
    assert dense_grads.keys() == sparse_grads.keys()
    if graph == "synth_graph":
        assert "slice_logits" in dense_grads  # the learned time-slice mix is trained through both paths
    for k in dense_grads:
        torch.testing.assert_close(dense_grads[k], sparse_grads[k], atol=1e-4, rtol=1e-3)
    _assert_equivariant(expert, data)  # the message-passing path is equivariant too


def test_sparse_od_graph_uses_message_passing():
    from urbanrep.experts.mobility import use_dense_flows

    assert use_dense_flows(180, 29857)
    assert not use_dense_flows(10_000, 200_000)  # large city: O(N^2) would not fit
    assert not use_dense_flows(1000, 5000)  # sparse OD graph


def test_weighted_aggregate_matches_graphconv_and_gradcheck():
    """The memory-lean aggregation is GraphConv(aggr='add') message passing, gradients included."""
    from torch_geometric.nn import GraphConv

    from urbanrep.experts.mobility import DirectedFlowConv, weighted_aggregate

    g = torch.Generator().manual_seed(0)
    n, e = 12, 40
    ei = torch.randint(0, n, (2, e), generator=g)
    x = torch.randn(n, 3, dtype=torch.double, requires_grad=True)
    w = torch.rand(e, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: weighted_aggregate(x, ei[0], ei[1], w, n), (x, w))
    torch.manual_seed(0)
    conv = DirectedFlowConv(3, 5).double()
    w_out, w_in = torch.rand(e, generator=g, dtype=torch.double), torch.rand(e, generator=g, dtype=torch.double)
    ref = 0.5 * conv.conv_out(x, ei.flip(0), w_out) + 0.5 * conv.conv_in(x, ei, w_in)
    torch.testing.assert_close(conv(x, ei, w_out, w_in), ref)
    plain = GraphConv(3, 5, aggr="add").double()
    torch.testing.assert_close(plain.lin_rel(weighted_aggregate(x, ei[0], ei[1], w, n)) + plain.lin_root(x),
                               plain(x, ei, w))


def test_mobility_flow_inputs(nyc_graph):
    """``flow_inputs`` feeds flow-profile components to the mobility expert: it changes the output
    and stays equivariant to region order; a graph prepared for mini-batches carries the whole
    city's components into its subgraphs, and the expert reads them there."""
    from dataclasses import replace

    from urbanrep.experts.mobility import FLOW_PROFILE_KEY, with_flow_profile
    from urbanrep.subgraph import InducedSubgraphs

    md = GraphMetadata.from_data(nyc_graph)
    torch.manual_seed(0)
    expert = expert_from_config(get_expert("mobility"), md.channels("mobility"), replace(CFG, flow_inputs=8),
                                num_slices=md.num_slices).eval()
    out = _assert_equivariant(expert, nyc_graph)
    prepared = with_flow_profile(nyc_graph, 8)
    assert FLOW_PROFILE_KEY not in nyc_graph["region"]  # a copy: the caller's graph is left as it was
    with torch.no_grad():
        torch.testing.assert_close(expert(prepared), out)  # the same components, stored or computed
        batch = InducedSubgraphs(prepared)({"region": torch.arange(0, 180, 2).numpy()})
        torch.testing.assert_close(expert.flow_profile(batch), prepared["region"][FLOW_PROFILE_KEY][::2])
        expert.flow_proj.weight.zero_()
        expert.flow_proj.bias.zero_()
        assert not torch.allclose(out, expert(nyc_graph), atol=1e-4)
    assert with_flow_profile(nyc_graph, 0) is nyc_graph
    with pytest.raises(ConfigError):
        ExpertConfig(flow_inputs=-1)


def test_flow_targets_travel_with_the_city(nyc_graph):
    """A mobility-only model's input-retention target is the whole city's flow-profile components in
    every mini-batch (a batch's own OD edges would give another basis in every batch); a model with
    other modalities (flow_components 0) asks for none. Without OD edges the expert's flow inputs come
    from the adjacency it falls back to, once for the city, and no retention target is stored."""
    import copy
    from dataclasses import replace

    from urbanrep.experts.mobility import (
        FLOW_PROFILE_KEY,
        city_flow_profile,
        flow_target_key,
        with_flow_profile,
    )
    from urbanrep.graphs.schema import ADJACENT, MODALITY_EDGE
    from urbanrep.network import ModelConfig, flow_target_widths, graph_flow_components
    from urbanrep.subgraph import InducedSubgraphs

    solo = replace(ModelConfig(), modalities=("mobility",))
    assert flow_target_widths(solo, nyc_graph) == ()  # no retention by default since round 2026-12-07ae
    solo = replace(solo, loss=replace(solo.loss, solo_flow_components=16))
    assert flow_target_widths(solo, nyc_graph) == (16,)
    assert flow_target_widths(ModelConfig(), nyc_graph) == ()
    assert flow_target_widths(replace(solo, loss=replace(solo.loss, feature_weight=0.0)), nyc_graph) == ()
    assert flow_target_widths(replace(ModelConfig(), modalities=("poi",)), nyc_graph) == ()
    prepared = with_flow_profile(nyc_graph, 0, (16,))
    whole = graph_flow_components(nyc_graph, 16)
    assert torch.equal(graph_flow_components(prepared, 16), whole)  # full batch: what it computed before
    rows = torch.arange(0, 180, 3)
    batch = InducedSubgraphs(prepared)({"region": rows.numpy()})
    torch.testing.assert_close(graph_flow_components(batch, 16), whole[rows])
    own = graph_flow_components(InducedSubgraphs(nyc_graph)({"region": rows.numpy()}), 16)
    assert not torch.allclose(own.abs(), whole[rows].abs(), atol=1e-3)  # what a batch computed before

    no_od = copy.copy(nyc_graph)
    del no_od[MODALITY_EDGE["mobility"]]
    ready = with_flow_profile(no_od, 8, (16,))
    adj = no_od[ADJACENT]
    ones = torch.ones(adj.edge_index.size(1))
    torch.testing.assert_close(ready["region"][FLOW_PROFILE_KEY],
                               city_flow_profile(adj.edge_index, ones, 180, 8))
    assert flow_target_key(16) not in ready["region"]


def test_models_saved_before_flow_inputs_read_back_without_them() -> None:
    """A saved ``config.json`` without ``expert.flow_inputs`` was trained without them: it reads back 0."""
    from urbanrep.network import ModelConfig
    from urbanrep.train import config_to_dict, model_config_from_dict

    now = config_to_dict(ModelConfig())
    assert model_config_from_dict(now).expert.flow_inputs == ModelConfig().expert.flow_inputs == 16
    before = {**now, "expert": {k: v for k, v in now["expert"].items() if k != "flow_inputs"}}
    assert model_config_from_dict(before).expert.flow_inputs == 0
