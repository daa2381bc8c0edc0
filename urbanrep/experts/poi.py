"""POI expert: attention over the POI-mix similarity graph."""

from __future__ import annotations

from torch import Tensor, nn
from torch_geometric.data import HeteroData
from torch_geometric.nn import GATv2Conv

from urbanrep.experts.base import ResidualStackExpert, register_expert
from urbanrep.experts.sparse import gatv2_conv


@register_expert("poi")
class PoiExpert(ResidualStackExpert):
    """GATv2 over ``(region, poi_similar, region)`` with the similarity as edge feature.

    Why this architecture: a POI mix is a composition (how much food, retail, offices...), and
    the kNN similarity graph links regions with alike mixes. Not every similar neighbour is
    equally informative: a residential region with one bar should not borrow nightlife from
    the bar district. Dynamic attention (GATv2) lets each region weight its look-alikes by
    their content, and passing the cosine similarity as ``edge_attr`` keeps the graph's own
    confidence in the score. Self loops keep the region's own mix.

    Args:
        in_channels: POI feature width ``F``.
        hidden_channels: Hidden width (split across ``heads``).
        out_channels: Output width.
        num_layers: GATv2 layers (each residual).
        dropout: Dropout between layers and on attention coefficients.
        input_dropout: Dropout on the standardised input.
        heads: Attention heads.
        log_inputs: Log-compress the input counts.

    Shapes:
        ``data['region'].x_poi`` ``[N, F]`` -> ``[N, out_channels]``.
    """

    modality = "poi"
    convs: nn.ModuleList

    def __init__(self, in_channels: int, hidden_channels: int = 64, out_channels: int = 64,
                 num_layers: int = 2, dropout: float = 0.1, input_dropout: float = 0.0,
                 heads: int = 4, log_inputs: bool = True) -> None:
        def layers() -> dict[str, nn.ModuleList]:
            return {"convs": nn.ModuleList([
                GATv2Conv(hidden_channels, hidden_channels // heads, heads=heads, dropout=dropout,
                          edge_dim=1, add_self_loops=True, fill_value=1.0)
                for _ in range(num_layers)
            ])}

        super().__init__(in_channels, hidden_channels, out_channels, num_layers, dropout, input_dropout, log_inputs,
                         layers)

    def forward(self, data: HeteroData) -> Tensor:
        """Region embeddings ``[N, out_channels]`` from the POI features and similarity graph."""
        x, mask = self.features(data)
        ei, w, _ = self.view_edges(data)
        h = self.encoder(x, mask)
        for conv, block in zip(self.convs, self.blocks, strict=True):  # w clamped at 0 is the edge feature
            h = block(h, gatv2_conv(conv, h, ei, w))
        return self.head(h)


__all__ = ["PoiExpert"]
