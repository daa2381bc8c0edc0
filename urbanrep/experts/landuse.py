"""Land-use expert: GraphSAGE/GCN over land-use similarity plus spatial adjacency."""

from __future__ import annotations

from torch import Tensor, nn
from torch_geometric.data import HeteroData
from torch_geometric.nn import GCNConv, SAGEConv

from urbanrep.experts.base import (
    ResidualStackExpert,
    get_edges,
    register_expert,
)
from urbanrep.experts.sparse import gcn_conv, sage_mean_conv
from urbanrep.graphs.schema import ADJACENT


@register_expert("landuse")
class LanduseExpert(ResidualStackExpert):
    """Two relations per layer: weighted GCN over ``landuse_similar`` + SAGE over ``adjacent``.

    Why this architecture: land use is both a composition (shares of residential, commercial,
    industrial...) and spatially contiguous — zoning comes in districts that span several
    regions. A normalised GCN over the cosine-similarity kNN graph smooths a region towards
    its look-alikes (weighted by similarity), while a mean GraphSAGE over the adjacency
    carries the district context with a separate root weight, so a small park inside an
    office district keeps its own identity. The two messages are summed (a relational GNN
    with one weight matrix per relation).

    Args:
        in_channels: Land-use feature width ``F``.
        hidden_channels: Hidden width.
        out_channels: Output width.
        num_layers: Layers (each residual).
        dropout: Dropout between layers.
        input_dropout: Dropout on the standardised input.
        log_inputs: Log-compress the input counts/shares.

    Shapes:
        ``data['region'].x_landuse`` ``[N, F]`` -> ``[N, out_channels]``.
    """

    modality = "landuse"
    sim_convs: nn.ModuleList
    adj_convs: nn.ModuleList

    def __init__(self, in_channels: int, hidden_channels: int = 64, out_channels: int = 64,
                 num_layers: int = 2, dropout: float = 0.1, input_dropout: float = 0.0,
                 log_inputs: bool = True) -> None:
        super().__init__(in_channels, hidden_channels, out_channels, num_layers, dropout, input_dropout, log_inputs,
                         lambda: {
            "sim_convs": nn.ModuleList([GCNConv(hidden_channels, hidden_channels) for _ in range(num_layers)]),
            "adj_convs": nn.ModuleList([SAGEConv(hidden_channels, hidden_channels, aggr="mean")
                                        for _ in range(num_layers)]),
        })

    def forward(self, data: HeteroData) -> Tensor:
        """Region embeddings ``[N, out_channels]`` from land-use features, similarity and adjacency."""
        x, mask = self.features(data)
        sim_ei, sim_w, _ = self.view_edges(data)
        adj_ei, _, _ = get_edges(data, ADJACENT, None)
        h = self.encoder(x, mask)
        for sim, adj, block in zip(self.sim_convs, self.adj_convs, self.blocks, strict=True):  # sim_w clamped at 0
            h = block(h, gcn_conv(sim, h, sim_ei, sim_w) + sage_mean_conv(adj, h, adj_ei))
        return self.head(h)
