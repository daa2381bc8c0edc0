"""Road expert: a connectivity GNN over roads that cross region boundaries."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.data import HeteroData
from torch_geometric.nn import GINEConv

from urbanrep.experts.base import ResidualStackExpert, register_expert


@register_expert("road")
class RoadExpert(ResidualStackExpert):
    """GINE over ``(region, road_connected, region)`` with the crossing count as edge feature.

    Why this architecture: the road modality is about connectivity — how many streets link a
    region to each neighbour, which sets how permeable and central it is — and region-level
    road statistics (density, intersection counts, circuity) are structural descriptors rather
    than mixtures. GIN's sum aggregation is injective on neighbourhoods, so it can count (a
    region with six connected neighbours differs from one with two, which mean-based layers
    cannot tell), and GINE adds the log number of crossing roads to every message so a
    boulevard junction outweighs one alley.

    Args:
        in_channels: Road feature width ``F``.
        hidden_channels: Hidden width.
        out_channels: Output width.
        num_layers: GINE layers (each residual).
        dropout: Dropout between layers.
        input_dropout: Dropout on the standardised input.
        log_inputs: Log-compress the input statistics.

    Shapes:
        ``data['region'].x_road`` ``[N, F]`` -> ``[N, out_channels]``.
    """

    modality = "road"
    convs: nn.ModuleList

    def __init__(self, in_channels: int, hidden_channels: int = 64, out_channels: int = 64,
                 num_layers: int = 2, dropout: float = 0.1, input_dropout: float = 0.0,
                 log_inputs: bool = True) -> None:
        def layers() -> dict[str, nn.ModuleList]:
            return {"convs": nn.ModuleList([
                GINEConv(nn.Sequential(nn.Linear(hidden_channels, hidden_channels), nn.ELU(),
                                       nn.Linear(hidden_channels, hidden_channels)),
                         train_eps=True, edge_dim=1)
                for _ in range(num_layers)
            ])}

        super().__init__(in_channels, hidden_channels, out_channels, num_layers, dropout, input_dropout, log_inputs,
                         layers)

    def forward(self, data: HeteroData) -> Tensor:
        """Region embeddings ``[N, out_channels]`` from road statistics and connectivity."""
        x, mask = self.features(data)
        ei, w, _ = self.view_edges(data)
        h = self.encoder(x, mask)
        edge_attr = torch.log1p(w.clamp_min(0.0)).unsqueeze(-1).to(h.dtype)
        for conv, block in zip(self.convs, self.blocks, strict=True):
            h = block(h, conv(h, ei, edge_attr))
        return self.head(h)
