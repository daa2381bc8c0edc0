"""Experts that are the same for every modality: shared experts (MoE) and the uniform ablation."""

from __future__ import annotations

from torch import Tensor, nn
from torch_geometric.data import HeteroData
from torch_geometric.nn import GCNConv

from urbanrep.experts.base import (
    Expert,
    MaskedInputEncoder,
    ResidualBlock,
    get_edges,
    register_expert,
    reset_modules,
)
from urbanrep.experts.sparse import gcn_conv
from urbanrep.graphs.schema import ADJACENT


class GCNStack(nn.Module):
    """Residual GCN layers plus a linear head: ``[N, hidden] -> [N, out]``.

    Args:
        hidden_channels: Width of the layers.
        out_channels: Output width.
        num_layers: GCN layers.
        dropout: Dropout between layers.
    """

    def __init__(self, hidden_channels: int, out_channels: int, num_layers: int, dropout: float) -> None:
        super().__init__()
        self.convs = nn.ModuleList([GCNConv(hidden_channels, hidden_channels) for _ in range(num_layers)])
        self.blocks = nn.ModuleList([ResidualBlock(hidden_channels, dropout) for _ in range(num_layers)])
        self.head = nn.Linear(hidden_channels, out_channels)

    def reset_parameters(self) -> None:
        reset_modules(self.convs, self.blocks)
        self.head.reset_parameters()

    def forward(self, h: Tensor, edge_index: Tensor, edge_weight: Tensor | None = None) -> Tensor:
        """``h`` ``[N, hidden]`` over ``edge_index`` ``[2, E]`` -> ``[N, out]``."""
        for conv, block in zip(self.convs, self.blocks, strict=True):  # weights clamped at 0
            h = block(h, gcn_conv(conv, h, edge_index, edge_weight))
        return self.head(h)


@register_expert("shared")
class SharedExpert(Expert):
    """A shared expert of the mixture: per-modality input projection + a GCN shared by all modalities.

    Why this architecture: shared experts (as in DeepSeek-MoE) hold what every modality has in
    common — here, spatial smoothness over region adjacency — so the dedicated experts can
    specialise. The input projection must be per modality (widths differ); the GCN
    ``backbone`` is one module passed to every modality's copy, so its weights are shared.

    Args:
        in_channels: Feature width of ``modality``.
        modality: The aggregated modality this copy reads.
        backbone: The shared :class:`GCNStack` (a new one when None).
        hidden_channels: Hidden width.
        out_channels: Output width.
        num_layers: GCN layers of a new backbone.
        dropout: Dropout of a new backbone.
        input_dropout: Dropout on the standardised input.
        log_inputs: Log-compress the input.

    Shapes:
        ``data['region'].x_<modality>`` ``[N, F]`` -> ``[N, out_channels]``.
    """

    def __init__(self, in_channels: int, modality: str = "poi", backbone: GCNStack | None = None,
                 hidden_channels: int = 64, out_channels: int = 64, num_layers: int = 2,
                 dropout: float = 0.1, input_dropout: float = 0.0, log_inputs: bool = True) -> None:
        super().__init__()
        self.modality = modality
        self.out_channels = out_channels
        self.encoder = MaskedInputEncoder(in_channels, hidden_channels, input_dropout, log_inputs)
        self.backbone = backbone if backbone is not None else GCNStack(hidden_channels, out_channels,
                                                                       num_layers, dropout)

    def reset_parameters(self) -> None:
        self.encoder.reset_parameters()
        self.backbone.reset_parameters()

    def forward(self, data: HeteroData) -> Tensor:
        """Region embeddings ``[N, out_channels]`` over region adjacency."""
        x, mask = self.features(data)
        ei, w, _ = get_edges(data, ADJACENT, None)
        return self.backbone(self.encoder(x, mask), ei, w)


@register_expert("uniform")
class UniformExpert(Expert):
    """Ablation "one GNN architecture for every modality": input projection + GCN over the view graph.

    Why it exists: MTGRR's claim is that modality-tailored experts beat one identical GNN per
    modality. This expert is that identical GNN — a weighted GCN over the modality's own
    view graph (adjacency when there is none) — used for every aggregated modality when
    ``ModelConfig.uniform_experts`` is set.

    Args:
        in_channels: Feature width of ``modality``.
        modality: The aggregated modality this expert reads.
        hidden_channels: Hidden width.
        out_channels: Output width.
        num_layers: GCN layers.
        dropout: Dropout between layers.
        input_dropout: Dropout on the standardised input.
        log_inputs: Log-compress the input.

    Shapes:
        ``data['region'].x_<modality>`` ``[N, F]`` -> ``[N, out_channels]``.
    """

    def __init__(self, in_channels: int, modality: str = "poi", hidden_channels: int = 64,
                 out_channels: int = 64, num_layers: int = 2, dropout: float = 0.1,
                 input_dropout: float = 0.0, log_inputs: bool = True) -> None:
        super().__init__()
        self.modality = modality
        self.out_channels = out_channels
        self.encoder = MaskedInputEncoder(in_channels, hidden_channels, input_dropout, log_inputs)
        self.gnn = GCNStack(hidden_channels, out_channels, num_layers, dropout)

    def reset_parameters(self) -> None:
        self.encoder.reset_parameters()
        self.gnn.reset_parameters()

    def forward(self, data: HeteroData) -> Tensor:
        """Region embeddings ``[N, out_channels]`` over the modality's view graph."""
        x, mask = self.features(data)
        ei, w, _ = self.view_edges(data)
        return self.gnn(self.encoder(x, mask), ei, w)
