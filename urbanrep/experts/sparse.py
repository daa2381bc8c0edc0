"""Neighbour aggregation as sparse matrix products, with the graph's operators built once.

PyG's gather-scatter message passing materialises one ``[E, C]`` message tensor per layer (kept
for the backward pass) and sums it with ``scatter_add``; on one CPU thread that is memory-bound
edge work (at 10k regions about 70 ms per 180k-edge aggregation of 64 channels). A sum of
weighted neighbour features is a sparse matrix product ``A @ x`` with ``A[dst, src] = w``; as a
CSR matrix it runs in the sparse BLAS (MKL on CPU, cuSPARSE on CUDA), tens of times faster and
with no ``[E, C]`` tensor at all. The backward pass needs ``A^T @ grad`` (and, when the weights
are learned, the sampled product ``grad[dst] . x[src]`` per edge), so :class:`SparseOperator`
keeps both orientations.

The operators of a graph (its structure, normalised weights, the transpose) depend on the graph
alone and are built once per graph (:func:`urbanrep.graphs.cache.graph_constant`). The layers
below compute the same functions as the PyG layers they stand for (same parameters, same
state dict); only the order of the floating-point sums differs (float32 rounding).

Shapes: ``x`` ``[N_src, C]`` -> ``[N_dst, C]``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils.checkpoint
from torch import Tensor
from torch_geometric.nn import GATv2Conv, GCNConv, SAGEConv
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from torch_geometric.utils import add_self_loops, remove_self_loops
from torch_geometric.utils import softmax as pyg_softmax

from urbanrep.graphs.cache import graph_constant


@dataclass(frozen=True)
class SparsePattern:
    """The CSR structure of ``A[dst, src]`` for an edge list, in both orientations.

    Duplicate edges share one entry (their weights add up, as in message passing).

    Attributes:
        shape: ``(N_dst, N_src)``.
        crow: ``[N_dst + 1]`` CSR row pointers of ``A``.
        col: ``[nnz]`` column (source) of each entry of ``A``.
        position: ``[E]`` entry of ``A`` each edge adds its weight to.
        crow_t: ``[N_src + 1]`` row pointers of ``A^T``.
        col_t: ``[nnz]`` columns of ``A^T``.
        to_t: ``[nnz]`` entry of ``A`` behind each entry of ``A^T``.
    """

    shape: tuple[int, int]
    crow: Tensor
    col: Tensor
    position: Tensor
    crow_t: Tensor
    col_t: Tensor
    to_t: Tensor

    @property
    def nnz(self) -> int:
        """Stored entries (distinct edges)."""
        return int(self.col.numel())

    @classmethod
    def from_edges(cls, src: Tensor, dst: Tensor, num_dst: int, num_src: int) -> SparsePattern:
        """Build the pattern of ``A[dst, src]``."""
        dev = src.device
        key = dst.long() * num_src + src.long()
        uniq, position = torch.unique(key, sorted=True, return_inverse=True)
        rows, cols = uniq // num_src, uniq % num_src
        crow = _row_pointers(rows, num_dst)
        order_t = torch.argsort(cols * num_dst + rows)
        crow_t = _row_pointers(cols[order_t], num_src)
        return cls((num_dst, num_src), crow.to(dev), cols.to(dev), position.to(dev), crow_t.to(dev),
                   rows[order_t].to(dev), order_t.to(dev))

    def values(self, weight: Tensor) -> Tensor:
        """``[nnz]`` entries of ``A`` from per-edge weights ``[E]`` (duplicates summed)."""
        return weight.new_zeros(self.nnz).index_add_(0, self.position, weight)


def _csr(crow: Tensor, col: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    """A CSR tensor from trusted parts (built here: no invariant checks; PyTorch's "beta" notice silenced)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


def _row_pointers(rows: Tensor, num_rows: int) -> Tensor:
    """CSR row pointers ``[num_rows + 1]`` of sorted row indices."""
    counts = torch.bincount(rows, minlength=num_rows)
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])


class SparseOperator:
    """``A`` ``[N_dst, N_src]`` (CSR, both orientations) with fixed values: ``op @ x``, differentiable in ``x``.

    Args:
        pattern: The structure.
        values: ``[nnz]`` values of ``A`` (float32 or float64; no grad).
    """

    def __init__(self, pattern: SparsePattern, values: Tensor) -> None:
        self.pattern = pattern
        self.a = _csr(pattern.crow, pattern.col, values, pattern.shape)
        self.a_t = _csr(pattern.crow_t, pattern.col_t, values[pattern.to_t], (pattern.shape[1], pattern.shape[0]))

    @classmethod
    def from_edges(cls, src: Tensor, dst: Tensor, weight: Tensor, num_dst: int, num_src: int) -> SparseOperator:
        """``A[dst_e, src_e] += weight_e`` over the edges."""
        pattern = SparsePattern.from_edges(src, dst, num_dst, num_src)
        return cls(pattern, pattern.values(weight))

    def __matmul__(self, x: Tensor) -> Tensor:
        out: Tensor = _FixedSpMM.apply(x, self)
        return out


def _csr_mm(a: Tensor, x: Tensor) -> Tensor:
    """``a @ x`` in ``a``'s dtype, returned in ``x``'s (e.g. bf16 activations under autocast)."""
    if x.dtype == a.dtype:
        return a @ x
    return (a @ x.to(a.dtype)).to(x.dtype)


class _FixedSpMM(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, op: SparseOperator) -> Tensor:
        ctx.op = op
        return _csr_mm(op.a, x.contiguous())

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None]:
        return _csr_mm(ctx.op.a_t, grad.contiguous()) if ctx.needs_input_grad[0] else None, None


class _WeightedSpMM(torch.autograd.Function):
    """``A(w) @ x`` differentiable in both the per-edge weights ``w`` and ``x``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, pattern: SparsePattern) -> Tensor:
        x = x.contiguous()
        values = pattern.values(weight.detach().to(torch.float32 if weight.dtype != torch.float64 else weight.dtype))
        ctx.pattern, ctx.weight_dtype = pattern, weight.dtype
        ctx.save_for_backward(x, values)
        return _csr_mm(_csr(pattern.crow, pattern.col, values, pattern.shape), x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        x, values = ctx.saved_tensors
        p: SparsePattern = ctx.pattern
        grad = grad.contiguous()
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            a_t = _csr(p.crow_t, p.col_t, values[p.to_t], (p.shape[1], p.shape[0]))
            grad_x = _csr_mm(a_t, grad)
        if ctx.needs_input_grad[1]:
            pattern = _csr(p.crow, p.col, values.new_zeros(p.nnz), p.shape)
            sampled = torch.sparse.sampled_addmm(pattern, grad.to(values.dtype), x.to(values.dtype).t(), beta=0.0)
            grad_w = sampled.values()[p.position].to(ctx.weight_dtype)
        return grad_x, grad_w, None


def weighted_spmm(x: Tensor, weight: Tensor, pattern: SparsePattern) -> Tensor:
    """``out[t] = sum_{e: dst_e = t} weight_e * x[src_e]``, differentiable in ``x`` and ``weight``.

    Args:
        x: ``[N_src, C]`` node features.
        weight: ``[E]`` edge weights (may require grad).
        pattern: :class:`SparsePattern` of the same edges.

    Returns:
        ``[N_dst, C]``, in ``x``'s dtype.
    """
    out: Tensor = _WeightedSpMM.apply(x, weight, pattern)
    return out


def edge_pattern(edge_index: Tensor, num_nodes: int, reverse: bool = False) -> SparsePattern:
    """The cached :class:`SparsePattern` of ``A[dst, src]`` (``reverse``: ``A[src, dst]``) of a region graph."""
    src, dst = (edge_index[1], edge_index[0]) if reverse else (edge_index[0], edge_index[1])
    return graph_constant("pattern", (edge_index,), lambda: SparsePattern.from_edges(src, dst, num_nodes, num_nodes),
                          extra=(num_nodes, reverse))


def mean_operator(edge_index: Tensor, num_nodes: int) -> SparseOperator:
    """Cached ``A`` with ``A @ x`` = the mean of each node's incoming neighbours (0 without any)."""

    def build() -> SparseOperator:
        src, dst = edge_index[0], edge_index[1]
        deg = torch.zeros(num_nodes, device=dst.device).index_add_(0, dst, torch.ones(dst.numel(), device=dst.device))
        return SparseOperator.from_edges(src, dst, 1.0 / deg[dst], num_nodes, num_nodes)

    return graph_constant("mean", (edge_index,), build, extra=num_nodes)


def gcn_operator(edge_index: Tensor, edge_weight: Tensor | None, num_nodes: int, improved: bool = False,
                 add_self_loops: bool = True) -> SparseOperator:
    """Cached ``D^-1/2 (A + I) D^-1/2`` exactly as :class:`~torch_geometric.nn.GCNConv` normalises it,
    with the edge weights clamped at 0 first (similarities may be slightly negative)."""

    def build() -> SparseOperator:
        w0 = None if edge_weight is None else edge_weight.float().clamp_min(0.0)
        ei, w = gcn_norm(edge_index, w0, num_nodes, improved, add_self_loops, "source_to_target", torch.float32)
        assert w is not None
        return SparseOperator.from_edges(ei[0], ei[1], w, num_nodes, num_nodes)

    return graph_constant("gcn", (edge_index, edge_weight), build, extra=(num_nodes, improved, add_self_loops))


def gcn_conv(conv: GCNConv, x: Tensor, edge_index: Tensor, edge_weight: Tensor | None = None) -> Tensor:
    """``conv(x, edge_index, edge_weight)`` through a cached sparse operator (same parameters).

    ``edge_weight`` (clamped at 0) should be the graph's stored tensor, not a fresh copy, so
    that the operator is built once per graph.
    """
    op = gcn_operator(edge_index, edge_weight, x.size(0), conv.improved, conv.add_self_loops)
    out = op @ conv.lin(x)
    return out + conv.bias if conv.bias is not None else out


def sage_mean_conv(conv: SAGEConv, x: Tensor, edge_index: Tensor) -> Tensor:
    """``conv(x, edge_index)`` of a mean-aggregating :class:`~torch_geometric.nn.SAGEConv` (no projection,
    no normalisation) through a cached mean operator."""
    out = conv.lin_l(mean_operator(edge_index, x.size(0)) @ x)
    return out + conv.lin_r(x) if conv.root_weight else out


#: Below this many edges :func:`gatv2_conv` runs the PyG layer itself: its per-edge tensors are a
#: few MB at most there, and its fewer operations are faster (NYC-180, 2,552 POI edges: 6.7 ms
#: against 9.3 ms per member step).
GAT_SPARSE_MIN_EDGES = 16_384


def _gat_loops(edge_index: Tensor, weight: Tensor, num_nodes: int, fill_value: float) -> tuple[Tensor, Tensor]:
    """Cached ``(edge_index [2, E'], edge_attr [E', 1])`` with self loops replaced as GATv2Conv does,
    the weights clamped at 0."""

    def build() -> tuple[Tensor, Tensor]:
        ei, attr = remove_self_loops(edge_index, weight.float().clamp_min(0.0).unsqueeze(-1))
        return add_self_loops(ei, attr, fill_value=fill_value, num_nodes=num_nodes)

    return graph_constant("gat_loops", (edge_index, weight), build, extra=(num_nodes, fill_value))


def _gatv2_scores(x_l: Tensor, x_r: Tensor, attr: Tensor, lin_edge_weight: Tensor, lin_edge_bias: Tensor | None,
                  att: Tensor, src: Tensor, dst: Tensor, negative_slope: float) -> Tensor:
    edge_term = torch.nn.functional.linear(attr, lin_edge_weight, lin_edge_bias).view(-1, *x_l.shape[1:])
    e = x_l.index_select(0, src) + x_r.index_select(0, dst) + edge_term
    return (torch.nn.functional.leaky_relu(e, negative_slope) * att).sum(-1)


def gatv2_conv(conv: GATv2Conv, x: Tensor, edge_index: Tensor, edge_weight: Tensor) -> Tensor:
    """``conv(x, edge_index, edge_weight.clamp_min(0)[:, None])`` of a :class:`~torch_geometric.nn.GATv2Conv`
    with ``edge_dim=1`` and self loops, without keeping per-edge ``[E, heads, C]`` tensors (graphs
    of at least :data:`GAT_SPARSE_MIN_EDGES` edges; smaller ones run the PyG layer).

    The attention scores are recomputed in the backward pass (activation checkpointing of the
    score function) and the attention-weighted sum is one sparse product per head
    (:func:`weighted_spmm`); the self-loop edges are built once per graph. Same parameters,
    same dropout draws, same function as the PyG layer (float32 rounding aside).

    Args:
        conv: The layer (its parameters and settings are used).
        x: ``[N, F]`` node features.
        edge_index: ``[2, E]`` the graph's stored edges.
        edge_weight: ``[E]`` the graph's stored weights (the edge feature).

    Returns:
        ``[N, heads * C]`` (``concat``) or ``[N, C]``.
    """
    if (not (conv.add_self_loops and conv.edge_dim == 1 and conv.lin_edge is not None) or conv.share_weights
            or edge_index.size(1) < GAT_SPARSE_MIN_EDGES):
        return conv(x, edge_index, edge_weight.clamp_min(0.0).unsqueeze(-1).to(x.dtype))
    n, heads, c = x.size(0), conv.heads, conv.out_channels
    ei, attr = _gat_loops(edge_index, edge_weight, n, float(conv.fill_value))  # type: ignore[arg-type]
    src, dst = ei[0], ei[1]
    res = conv.res(x) if conv.res is not None else None
    x_l = conv.lin_l(x).view(-1, heads, c)
    x_r = conv.lin_r(x).view(-1, heads, c)
    args = (x_l, x_r, attr.to(x.dtype), conv.lin_edge.weight, conv.lin_edge.bias, conv.att, src, dst,
            conv.negative_slope)
    if torch.is_grad_enabled():  # keep only [N, ...] inputs; the [E, heads, C] scores are redone in backward
        alpha = torch.utils.checkpoint.checkpoint(_gatv2_scores, *args, use_reentrant=False,
                                                  preserve_rng_state=False)
    else:
        alpha = _gatv2_scores(*args)
    alpha = pyg_softmax(alpha, dst, num_nodes=n)
    alpha = torch.nn.functional.dropout(alpha, p=conv.dropout, training=conv.training)
    pattern = edge_pattern(ei, n)
    out = torch.stack([weighted_spmm(x_l[:, h], alpha[:, h], pattern) for h in range(heads)], 1)
    out = out.reshape(n, heads * c) if conv.concat else out.mean(dim=1)
    if res is not None:
        out = out + res
    return out + conv.bias if conv.bias is not None else out
