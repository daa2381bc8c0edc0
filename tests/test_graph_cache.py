"""Graph constants computed once per graph (urbanrep/graphs/cache.py) and the sparse layers built on them."""

from __future__ import annotations

import gc

import pytest
import torch
from torch_geometric.nn import GATv2Conv, GCNConv, SAGEConv
from torch_geometric.utils import scatter

from urbanrep.experts import sparse
from urbanrep.experts.sparse import (
    SparseOperator,
    SparsePattern,
    gatv2_conv,
    gcn_conv,
    mean_operator,
    sage_mean_conv,
    weighted_spmm,
)
from urbanrep.experts.testing import random_region_graph
from urbanrep.graphs import cache
from urbanrep.graphs.cache import clear_graph_cache, graph_cache_disabled, graph_constant
from urbanrep.network import GraphMetadata, ModelConfig, RegionModel


def _edges(n: int = 40, e: int = 200, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ei = torch.randint(0, n, (2, e), generator=g)
    ei = torch.cat([ei, ei[:, :10]], 1)  # duplicate edges add up
    return ei, torch.rand(ei.size(1), generator=g) - 0.1  # a few negative weights (clamped)


def test_constant_is_built_once_and_rebuilt_after_an_in_place_change() -> None:
    clear_graph_cache()
    t = torch.arange(5.0)
    calls: list[int] = []

    def build() -> torch.Tensor:
        calls.append(1)
        return t * 2

    a = graph_constant("double", (t,), build)
    assert graph_constant("double", (t,), build) is a and len(calls) == 1
    assert graph_constant("double", (t,), build, extra=1) is not a and len(calls) == 2  # other settings
    t.add_(1.0)  # bumps the version counter
    assert torch.equal(graph_constant("double", (t,), build), torch.arange(1.0, 6.0) * 2) and len(calls) == 3
    assert graph_constant("double", (t.clone(),), build) is not None and len(calls) == 4  # another tensor


def test_entries_go_with_their_tensors_and_grad_inputs_are_not_cached() -> None:
    clear_graph_cache()
    t = torch.ones(3)
    graph_constant("x", (t,), lambda: torch.zeros(1))
    assert len(cache._entries) == 1
    del t
    gc.collect()
    assert len(cache._entries) == 0
    w = torch.ones(3, requires_grad=True)
    out = graph_constant("y", (w,), lambda: w * 3)
    assert out.requires_grad and len(cache._entries) == 0  # computed with autograd, not kept
    with graph_cache_disabled():
        graph_constant("z", (torch.ones(2),), lambda: 1)
    assert len(cache._entries) == 0


def test_sparse_layers_match_pyg() -> None:
    torch.manual_seed(0)
    n = 40
    ei, w = _edges(n)
    x = torch.randn(n, 8, requires_grad=True)
    gcn, sage = GCNConv(8, 8), SAGEConv(8, 8, aggr="mean")
    torch.testing.assert_close(gcn_conv(gcn, x, ei, w), gcn(x, ei, w.clamp_min(0.0)))
    torch.testing.assert_close(gcn_conv(gcn, x, ei, None), gcn(x, ei))
    torch.testing.assert_close(sage_mean_conv(sage, x, ei), sage(x, ei))
    torch.testing.assert_close(mean_operator(ei, n) @ x, scatter(x[ei[0]], ei[1], 0, dim_size=n, reduce="mean"))
    # gradients of the fixed operator (A^T in backward) and of learned weights (sampled product)
    xd, wd = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    op = SparseOperator.from_edges(ei[0], ei[1], w.detach().double(), n, n)
    assert torch.autograd.gradcheck(lambda a: op @ a, (xd,))
    pattern = SparsePattern.from_edges(ei[0], ei[1], n, n)
    assert torch.autograd.gradcheck(lambda a, b: weighted_spmm(a, b, pattern), (xd, wd))


@pytest.mark.parametrize("training", [False, True])
def test_gatv2_matches_pyg_with_the_same_dropout(training: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sparse, "GAT_SPARSE_MIN_EDGES", 0)  # the sparse path on a small graph
    torch.manual_seed(0)
    n = 40
    ei, w = _edges(n)
    conv = GATv2Conv(16, 4, heads=4, dropout=0.3, edge_dim=1, add_self_loops=True, fill_value=1.0).train(training)
    x = torch.randn(n, 16, requires_grad=True)
    torch.manual_seed(5)
    ref = conv(x, ei, w.clamp_min(0.0).unsqueeze(-1))
    ref_grads = torch.autograd.grad(ref.square().sum(), [x, *conv.parameters()])
    torch.manual_seed(5)
    got = gatv2_conv(conv, x, ei, w)
    got_grads = torch.autograd.grad(got.square().sum(), [x, *conv.parameters()])
    torch.testing.assert_close(got, ref)
    for a, b in zip(got_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("ensemble", [1, 2])
def test_cached_training_step_equals_uncached(ensemble: int) -> None:
    """Forward, loss and gradients with the graph constants cached equal those computed afresh."""
    data = random_region_graph(120, ("poi", "mobility", "landuse", "remote_sensing"), seed=2, num_slices=3)
    torch.manual_seed(0)
    model = RegionModel(ModelConfig(ensemble=ensemble), GraphMetadata.from_data(data))

    def step() -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        torch.manual_seed(1)
        gen = torch.Generator().manual_seed(1)
        out = model(data)
        total, _ = model.loss(data, out, gen)
        total.backward()
        return torch.cat([out.embedding.detach().flatten(), total.detach().view(1)]), [
            p.grad.clone() for p in model.parameters() if p.grad is not None]

    clear_graph_cache()
    with graph_cache_disabled():
        fresh, fresh_grads = step()
    first, first_grads = step()  # fills the cache
    again, again_grads = step()  # reads it
    assert len(cache._entries) > 0
    for got, grads in ((first, first_grads), (again, again_grads)):
        assert torch.equal(got, fresh)
        assert all(torch.equal(a, b) for a, b in zip(grads, fresh_grads, strict=True))
