"""Mobility expert: a direction-aware GNN over weighted origin-destination flows."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.data import HeteroData
from torch_geometric.nn import GraphConv
from torch_geometric.utils import scatter

from urbanrep.experts.base import Expert, MaskedInputEncoder, ResidualBlock, register_expert


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


class DirectedFlowConv(nn.Module):
    """Weighted directed convolution in the spirit of PyG's ``DirGNNConv``.

    ``DirGNNConv`` drops edge weights, which carry everything in an OD graph, so this layer
    keeps its structure (one conv along the edges, one against them, mixed by ``alpha``) with
    :class:`~torch_geometric.nn.GraphConv` on share-normalised weights::

        h_i' = alpha * GraphConv_out(h, reversed edges, out_share)
             + (1 - alpha) * GraphConv_in(h, edges, in_share)

    so a region hears where its trips go (out) and where its visitors come from (in) separately.

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

    def forward(self, x: Tensor, edge_index: Tensor, out_share: Tensor, in_share: Tensor) -> Tensor:
        """``x`` ``[N, C_in]`` -> ``[N, C_out]``; shares from :func:`flow_normalize`."""
        out = self.conv_out(x, edge_index.flip(0), out_share)
        inc = self.conv_in(x, edge_index, in_share)
        return self.alpha * out + (1.0 - self.alpha) * inc


@register_expert("mobility")
class MobilityExpert(Expert):
    """Direction-aware GNN over ``(region, mobility, region)`` trip flows.

    Why this architecture: OD flows are directed and weighted — a business district receives
    commuters from residential areas that it does not send back in the same proportions — so a
    symmetric GCN would blur the very asymmetry that separates land uses. Each layer is a
    :class:`DirectedFlowConv` over row- and column-normalised trip shares (magnitudes are
    kept in the node features). When the graph stores per-time-slice counts (``edge_attr``
    ``[E, S]``) a learned softmax over slices re-weights the flows before normalising, so the
    expert can favour e.g. morning commutes.

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

    Shapes:
        ``data['region'].x_mobility`` ``[N, F]`` -> ``[N, out_channels]``.
    """

    modality = "mobility"

    def __init__(self, in_channels: int, hidden_channels: int = 64, out_channels: int = 64,
                 num_layers: int = 2, dropout: float = 0.1, input_dropout: float = 0.0,
                 log_inputs: bool = True, num_slices: int = 0, alpha: float = 0.5) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.num_slices = num_slices
        self.encoder = MaskedInputEncoder(in_channels, hidden_channels, input_dropout, log_inputs)
        self.convs = nn.ModuleList([DirectedFlowConv(hidden_channels, hidden_channels, alpha)
                                    for _ in range(num_layers)])
        self.blocks = nn.ModuleList([ResidualBlock(hidden_channels, dropout) for _ in range(num_layers)])
        self.slice_logits = nn.Parameter(torch.zeros(max(num_slices, 1)))
        self.head = nn.Linear(hidden_channels, out_channels)

    def reset_parameters(self) -> None:
        self.encoder.reset_parameters()
        for conv, block in zip(self.convs, self.blocks, strict=True):
            conv.reset_parameters()
            block.reset_parameters()
        nn.init.zeros_(self.slice_logits)
        self.head.reset_parameters()

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
        for conv, block in zip(self.convs, self.blocks, strict=True):
            h = block(h, conv(h, ei, out_share.to(h.dtype), in_share.to(h.dtype)))
        return self.head(h)
