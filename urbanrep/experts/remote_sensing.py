"""Remote-sensing expert: a heavily regularised projection plus GCN over image similarity."""

from __future__ import annotations

from torch import Tensor, nn
from torch_geometric.data import HeteroData
from torch_geometric.nn import GCNConv

from urbanrep.experts.base import ResidualStackExpert, register_expert
from urbanrep.experts.sparse import gcn_conv


@register_expert("remote_sensing")
class RemoteSensingExpert(ResidualStackExpert):
    """Regularised projection of image features, then GCN over ``(region, rs_similar, region)``.

    Why this architecture: per-region image features are wide (512-d CLIP-like vectors) and,
    on their own, weakly related to socio-economic targets; with a few hundred regions a wide
    input layer overfits at once. The expert therefore standardises, drops out at least 30 % of
    the input, projects through a LayerNorm'd bottleneck, and lets a symmetric-normalised GCN
    over the visual-similarity kNN graph average the noise away among look-alike regions.

    Args:
        in_channels: Image feature width ``D``.
        hidden_channels: Hidden width.
        out_channels: Output width.
        num_layers: GCN layers (each residual).
        dropout: Dropout between layers.
        input_dropout: Dropout on the standardised input (at least 0.3 is used).
        log_inputs: Signed-log-compress the input (near identity for small features).

    Shapes:
        ``data['region'].x_remote_sensing`` ``[N, D]`` -> ``[N, out_channels]``.
    """

    modality = "remote_sensing"
    convs: nn.ModuleList

    def __init__(self, in_channels: int, hidden_channels: int = 64, out_channels: int = 64,
                 num_layers: int = 2, dropout: float = 0.1, input_dropout: float = 0.0,
                 log_inputs: bool = True) -> None:
        super().__init__(in_channels, hidden_channels, out_channels, num_layers, dropout, max(input_dropout, 0.3), log_inputs,
                         lambda: {
            "convs": nn.ModuleList([GCNConv(hidden_channels, hidden_channels) for _ in range(num_layers)]),
        })

    def forward(self, data: HeteroData) -> Tensor:
        """Region embeddings ``[N, out_channels]`` from image features and their similarity graph."""
        x, mask = self.features(data)
        ei, w, _ = self.view_edges(data)
        h = self.encoder(x, mask)
        for conv, block in zip(self.convs, self.blocks, strict=True):  # weights clamped at 0
            h = block(h, gcn_conv(conv, h, ei, w))
        return self.head(h)
