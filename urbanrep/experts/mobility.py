"""Mobility expert: a direction-aware GNN over weighted origin-destination flows."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch_geometric.data import HeteroData
from torch_geometric.nn import GraphConv
from torch_geometric.utils import scatter

from urbanrep.component_signs import fixed_signs
from urbanrep.experts.base import ResidualStackExpert, get_edges, register_expert
from urbanrep.experts.flows import flow_profile_components
from urbanrep.experts.sparse import SparsePattern, edge_pattern, weighted_spmm
from urbanrep.graphs.cache import graph_constant


def flow_normalize(edge_index: Tensor, weight: Tensor, num_nodes: int) -> tuple[Tensor, Tensor]:
    """Turn trip counts into transition shares in both directions.

    Args:
        edge_index: ``[2, E]`` origin -> destination.
        weight: ``[E]`` non-negative trip counts.
        num_nodes: Number of regions ``N``.

    Returns:
        ``(out_share, in_share)``, both ``[E]``: the share of the origin's outgoing trips
        (rows of the OD matrix sum to 1) and of the destination's incoming trips (columns sum to 1).
    """
    w = weight.clamp_min(0.0)
    out_tot = scatter(w, edge_index[0], 0, dim_size=num_nodes, reduce="sum")
    in_tot = scatter(w, edge_index[1], 0, dim_size=num_nodes, reduce="sum")
    return w / out_tot[edge_index[0]].clamp_min(1e-12), w / in_tot[edge_index[1]].clamp_min(1e-12)


def weighted_aggregate(x: Tensor, src: Tensor, dst: Tensor, weight: Tensor, num_nodes: int,
                       pattern: SparsePattern | None = None) -> Tensor:
    """Sum of ``weight``-scaled neighbour features at each destination (memory-lean message passing).

    A sparse matrix product (:func:`~urbanrep.experts.sparse.weighted_spmm`): no ``[E, C]``
    message tensor is made or kept for the backward pass, and the gradient of the weights is
    the sampled product ``grad[dst] . x[src]``.

    Args:
        x: ``[N, C]`` node features.
        src: ``[E]`` message sources.
        dst: ``[E]`` message destinations.
        weight: ``[E]`` edge weights (differentiable).
        num_nodes: ``N``.
        pattern: The :class:`~urbanrep.experts.sparse.SparsePattern` of ``A[dst, src]`` when
            the caller has it (cached per graph); built here otherwise.

    Returns:
        ``[N, C]``; what :class:`~torch_geometric.nn.GraphConv` with ``aggr="add"`` aggregates.
    """
    if pattern is None:
        pattern = SparsePattern.from_edges(src, dst, num_nodes, num_nodes)
    return weighted_spmm(x, weight, pattern)


#: Region attribute holding the flow-profile components a graph was prepared with (:func:`with_flow_profile`).
FLOW_PROFILE_KEY = "flow_profile"


def flow_components(edge_index: Tensor, weight: Tensor | None, num_nodes: int, k: int) -> Tensor:
    """``[N, k]`` :func:`~urbanrep.experts.flows.flow_profile_components` of OD edges (unit weights
    when ``weight`` is None), a graph constant.

    The one cached SVD of a city's flow profiles: the input-retention target
    (:func:`urbanrep.network.graph_flow_components`) and the expert's inputs
    (:func:`city_flow_profile`) share it when they ask for the same number of components.
    """

    def build() -> Tensor:
        w = torch.ones(edge_index.size(1), device=edge_index.device) if weight is None else weight
        return flow_profile_components(edge_index, w, num_nodes, k)

    return graph_constant("flow_components", (edge_index, weight), build, extra=(num_nodes, k))


def city_flow_profile(edge_index: Tensor, weight: Tensor | None, num_nodes: int, k: int) -> Tensor:
    """``[N, k]`` leading principal components of the regions' flow profiles, with fixed signs.

    :func:`flow_components` of the OD edges (where each region's trips go, as shares of its
    outflow, beside where its visitors come from), each column's sign set by
    :func:`urbanrep.component_signs.fixed_signs` (third moment positive): an SVD's signs depend on
    the row order, this choice does not, so an expert reading them stays equivariant to region
    order. A graph constant.
    """
    def build() -> Tensor:
        return fixed_signs(flow_components(edge_index, weight, num_nodes, k))

    return graph_constant("flow_inputs", (edge_index, weight), build, extra=(num_nodes, k))


def with_flow_profile(data: HeteroData, k: int, targets: Sequence[int] = ()) -> HeteroData:
    """A shallow copy of ``data`` whose regions carry flow-profile components of the whole graph.

    Training prepares its graph with this (both paths): mini-batch training takes subgraphs of a
    city, whose own OD edges would give other components (another basis in every batch), and an
    augmented view with dropped edges would give others again; computed once here from the
    city's OD graph, they travel with the regions into every batch and view.

    Args:
        data: The city's region graph.
        k: Components the mobility expert reads as inputs (``data['region'].flow_profile``
            ``[N, k]``, signs fixed, read by :meth:`MobilityExpert.flow_profile`); from the
            OD edges, or from the adjacency the expert falls back to on a graph without them.
        targets: Widths of the components the loss terms reconstruct or compare
            (``data['region'].flow_target_<w>`` ``[N, w]``, read by
            :func:`urbanrep.network.graph_flow_components`); only from OD edges.

    Returns:
        ``data`` itself when nothing is asked for.
    """
    from urbanrep.graphs.schema import MODALITY_EDGE

    et = MODALITY_EDGE["mobility"]
    widths = sorted({int(w) for w in targets if w > 0}) if et in data.edge_types else []
    if k <= 0 and not widths:
        return data
    out = copy.copy(data)
    n = int(data["region"].num_nodes)
    ei, w, _ = get_edges(data, et)  # what the expert's own view uses (MobilityExpert.view_edges); OD when widths
    if k > 0:
        out["region"][FLOW_PROFILE_KEY] = city_flow_profile(ei, w, n, k)
    for width in widths:  # one cached SVD with the inputs' when the widths match
        out["region"][flow_target_key(width)] = flow_components(ei, w, n, width)
    return out


def flow_target_key(width: int) -> str:
    """Region attribute of the ``width`` flow-profile components prepared for the loss terms."""
    return f"flow_target_{int(width)}"


def flow_inputs_for(config: Any, data: HeteroData) -> int:
    """The flow-profile components a model configured by ``config`` (a ``ModelConfig``) reads on ``data``.

    ``config.expert.flow_inputs`` when the model uses mobility (``config.modalities``, else every
    modality of the graph) and builds its dedicated mobility expert; 0 otherwise, so that nothing is
    computed for a model that never reads them.
    """
    used = config.modalities or tuple(getattr(data, "modalities", ()) or ())
    if "mobility" not in used or config.uniform_experts:
        return 0
    return int(config.expert.flow_inputs)


#: Largest region count for which flows may be aggregated with dense ``[N, N]`` operators.
DENSE_MAX_NODES = 2048
#: Dense operators are used when ``E * DENSE_MIN_FILL >= N * N`` (OD graphs of small cities are
#: nearly complete: NYC-180 has 29,857 of 32,400 possible pairs, where a BLAS matmul is ~30x
#: faster than gather-scatter message passing).
DENSE_MIN_FILL = 32


def use_dense_flows(num_nodes: int, num_edges: int) -> bool:
    """Whether :class:`DirectedFlowConv` should aggregate with dense operators (same result)."""
    return num_nodes <= DENSE_MAX_NODES and num_edges * DENSE_MIN_FILL >= num_nodes * num_nodes


def dense_flow_operators(edge_index: Tensor, out_share: Tensor, in_share: Tensor, num_nodes: int
                         ) -> tuple[Tensor, Tensor]:
    """``(A_out, A_in)``, both ``[N, N]``: ``A_out[o, d]`` = out share, ``A_in[d, o]`` = in share.

    ``A_out @ x`` is what :class:`DirectedFlowConv` aggregates along outgoing trips (at the
    origin, from destinations) and ``A_in @ x`` along incoming ones; duplicate edges add up,
    as in message passing.
    """
    o, d = edge_index[0], edge_index[1]
    a_out = out_share.new_zeros(num_nodes, num_nodes).index_put_((o, d), out_share, accumulate=True)
    a_in = in_share.new_zeros(num_nodes, num_nodes).index_put_((d, o), in_share, accumulate=True)
    return a_out, a_in


class DirectedFlowConv(nn.Module):
    """Weighted directed convolution in the spirit of PyG's ``DirGNNConv``.

    ``DirGNNConv`` drops edge weights, which carry everything in an OD graph, so this layer
    keeps its structure (one conv along the edges, one against them, mixed by ``alpha``) with
    :class:`~torch_geometric.nn.GraphConv` on share-normalised weights::

        h_i' = alpha * GraphConv_out(h, reversed edges, out_share)
             + (1 - alpha) * GraphConv_in(h, edges, in_share)

    so a region hears where its trips go (out) and where its visitors come from (in) separately.
    The neighbour sums are computed by :func:`weighted_aggregate` (sparse products, no per-edge
    activations) or, given ``dense`` operators (:func:`dense_flow_operators`), by two matrix
    products (much faster on the nearly complete OD graphs of small cities); both are the
    same function as the two ``GraphConv`` calls above.

    Args:
        in_channels: Input width.
        out_channels: Output width.
        alpha: Weight of the outgoing direction.
    """

    def __init__(self, in_channels: int, out_channels: int, alpha: float = 0.5) -> None:
        super().__init__()
        self.alpha = alpha
        self.conv_out = GraphConv(in_channels, out_channels, aggr="add")
        self.conv_in = GraphConv(in_channels, out_channels, aggr="add")

    def reset_parameters(self) -> None:
        self.conv_out.reset_parameters()
        self.conv_in.reset_parameters()

    def forward(self, x: Tensor, edge_index: Tensor, out_share: Tensor, in_share: Tensor,
                dense: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """``x`` ``[N, C_in]`` -> ``[N, C_out]``; shares from :func:`flow_normalize`.

        ``dense``: optional ``(A_out, A_in)`` from :func:`dense_flow_operators` for the same edges.
        """
        if dense is not None:
            a_out, a_in = dense
            out = self.conv_out.lin_rel(a_out.to(x.dtype) @ x) + self.conv_out.lin_root(x)
            inc = self.conv_in.lin_rel(a_in.to(x.dtype) @ x) + self.conv_in.lin_root(x)
        else:
            o, d, n = edge_index[0], edge_index[1], x.size(0)
            to_origin, to_destination = edge_pattern(edge_index, n, reverse=True), edge_pattern(edge_index, n)
            out = (self.conv_out.lin_rel(weighted_aggregate(x, d, o, out_share, n, to_origin))
                   + self.conv_out.lin_root(x))
            inc = (self.conv_in.lin_rel(weighted_aggregate(x, o, d, in_share, n, to_destination))
                   + self.conv_in.lin_root(x))
        return self.alpha * out + (1.0 - self.alpha) * inc


@register_expert("mobility")
class MobilityExpert(ResidualStackExpert):
    """Direction-aware GNN over ``(region, mobility, region)`` trip flows.

    Why this architecture: OD flows are directed and weighted — a business district receives
    commuters from residential areas that it does not send back in the same proportions — so a
    symmetric GCN would blur the very asymmetry that separates land uses. Each layer is a
    :class:`DirectedFlowConv` over row- and column-normalised trip shares (magnitudes are
    kept in the node features). When the graph stores per-time-slice counts (``edge_attr``
    ``[E, S]``) a learned softmax over slices re-weights the flows before normalising, so the
    expert can favour e.g. morning commutes. Nearly complete OD graphs of small cities are
    aggregated with dense ``[N, N]`` share matrices (:func:`use_dense_flows`), an exact
    rewrite of the same layer.

    Args:
        in_channels: Mobility feature width ``F``.
        hidden_channels: Hidden width.
        out_channels: Output width.
        num_layers: Directed layers (each residual).
        dropout: Dropout between layers.
        input_dropout: Dropout on the standardised input.
        log_inputs: Log-compress the input flows.
        num_slices: Width ``S`` of the edges' per-slice counts (0: use ``edge_weight``).
        alpha: Weight of the outgoing direction in each layer.
        flow_inputs: Leading flow-profile components added to the encoded input (0: none);
            see :class:`~urbanrep.experts.base.ExpertConfig`.

    Shapes:
        ``data['region'].x_mobility`` ``[N, F]`` -> ``[N, out_channels]``.
    """

    modality = "mobility"
    convs: nn.ModuleList

    def __init__(self, in_channels: int, hidden_channels: int = 64, out_channels: int = 64,
                 num_layers: int = 2, dropout: float = 0.1, input_dropout: float = 0.0,
                 log_inputs: bool = True, num_slices: int = 0, alpha: float = 0.5, flow_inputs: int = 0) -> None:
        super().__init__(in_channels, hidden_channels, out_channels, num_layers, dropout, input_dropout, log_inputs,
                         lambda: {"convs": nn.ModuleList([DirectedFlowConv(hidden_channels, hidden_channels, alpha)
                                                          for _ in range(num_layers)])})
        self.num_slices = num_slices
        self.slice_logits = nn.Parameter(torch.zeros(max(num_slices, 1)))
        self.flow_inputs = flow_inputs
        self.flow_proj = nn.Linear(flow_inputs, hidden_channels) if flow_inputs > 0 else None

    def reset_parameters(self) -> None:
        super().reset_parameters()
        nn.init.zeros_(self.slice_logits)
        if self.flow_proj is not None:
            self.flow_proj.reset_parameters()

    def flow_profile(self, data: HeteroData) -> Tensor:
        """``[N, flow_inputs]`` leading flow-profile components of the regions.

        Read from ``data['region'].flow_profile`` when the graph carries them (a mini-batch of a
        graph that :func:`with_flow_profile` prepared: the components of the whole city, not of the
        batch), else computed from this graph's OD edges (a graph constant).
        """
        stored = data["region"].get(FLOW_PROFILE_KEY)
        if stored is not None and stored.size(1) >= self.flow_inputs:
            return stored[:, :self.flow_inputs]
        ei, w, _ = self.view_edges(data)
        return city_flow_profile(ei, w, data["region"].num_nodes, self.flow_inputs)

    def flow_weights(self, data: HeteroData) -> tuple[Tensor, Tensor, Tensor]:
        """``(edge_index, out_share, in_share)`` with the learned time-slice mix applied."""
        ei, w, attr = self.view_edges(data)
        if self.num_slices and attr is not None and attr.size(1) == self.num_slices:
            mix = torch.softmax(self.slice_logits, 0) * self.num_slices
            w = attr.to(mix.dtype).clamp_min(0.0) @ mix
        out_share, in_share = flow_normalize(ei, w, data["region"].num_nodes)
        return ei, out_share, in_share

    def forward(self, data: HeteroData) -> Tensor:
        """Region embeddings ``[N, out_channels]`` from flow features and the OD graph."""
        x, mask = self.features(data)
        ei, out_share, in_share = self.flow_weights(data)
        h = self.encoder(x, mask)
        if self.flow_proj is not None:
            h = h + self.flow_proj(self.flow_profile(data).to(h.dtype)) * mask.unsqueeze(-1).to(h.dtype)
        out_share, in_share = out_share.to(h.dtype), in_share.to(h.dtype)
        n = x.size(0)
        dense = dense_flow_operators(ei, out_share, in_share, n) if use_dense_flows(n, ei.size(1)) else None
        for conv, block in zip(self.convs, self.blocks, strict=True):
            h = block(h, conv(h, ei, out_share, in_share, dense))
        return self.head(h)
