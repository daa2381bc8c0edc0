"""Street-view expert: a dual-level GNN (images, then regions)."""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import Tensor, nn
from torch_geometric.data import HeteroData
from torch_geometric.nn import GraphConv, SAGEConv
from torch_geometric.nn.aggr import AttentionalAggregation
from torch_geometric.utils import degree

from urbanrep.experts.base import (
    Expert,
    MaskedInputEncoder,
    ResidualBlock,
    get_edges,
    register_expert,
    reset_modules,
)
from urbanrep.graphs.schema import ADJACENT, IMAGE, IMAGE_FEATURE, IMAGE_IN_REGION, IMAGE_SPATIAL

#: The image-image relations level 1 reads, in a fixed order.
IMAGE_RELATIONS = (IMAGE_SPATIAL, IMAGE_FEATURE)


@register_expert("street_view")
class StreetViewExpert(Expert):
    """Dual-level GNN: image graph -> attentional pooling into regions -> region graph.

    Why this architecture: street-view photos are points, many per region, and what a region
    looks like is a set of views whose meaning depends on their surroundings (a shopfront next
    to other shopfronts is a high street). Level 1 passes messages between images over two
    relations — spatial kNN (what is around the camera) and CLIP-feature kNN (what looks alike
    anywhere in the city) — with mean-normalised weighted :class:`GraphConv` (one weight matrix
    per relation). :class:`~torch_geometric.nn.aggr.AttentionalAggregation` then pools each
    region's images with learned attention (a landmark can dominate many generic road shots).
    Level 2 runs GraphSAGE over region adjacency so regions with few images borrow context.
    Regions without images get a learned missing token before level 2 and count as masked.

    Args:
        in_channels: Image feature width ``D``.
        hidden_channels: Hidden width.
        out_channels: Output width.
        num_layers: Layers per level.
        dropout: Dropout between layers.
        input_dropout: Dropout on the standardised image features.
        log_inputs: Signed-log-compress the image features.

    Shapes:
        ``data['image'].x`` ``[M, D]`` with ``(image, in_region, region)`` -> ``[N, out_channels]``.
    """

    modality = "street_view"

    def __init__(self, in_channels: int, hidden_channels: int = 64, out_channels: int = 64,
                 num_layers: int = 2, dropout: float = 0.1, input_dropout: float = 0.0,
                 log_inputs: bool = True) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.hidden_channels = hidden_channels
        self.image_encoder = MaskedInputEncoder(in_channels, hidden_channels, input_dropout, log_inputs)
        self.image_convs = nn.ModuleList([
            nn.ModuleList([GraphConv(hidden_channels, hidden_channels, aggr="mean") for _ in IMAGE_RELATIONS])
            for _ in range(num_layers)
        ])
        self.image_blocks = nn.ModuleList([ResidualBlock(hidden_channels, dropout) for _ in range(num_layers)])
        self.pool = AttentionalAggregation(gate_nn=nn.Linear(hidden_channels, 1),
                                           nn=nn.Linear(hidden_channels, hidden_channels))
        self.missing = nn.Parameter(torch.empty(hidden_channels))
        self.region_convs = nn.ModuleList([SAGEConv(hidden_channels, hidden_channels, aggr="mean")
                                           for _ in range(num_layers)])
        self.region_blocks = nn.ModuleList([ResidualBlock(hidden_channels, dropout) for _ in range(num_layers)])
        self.head = nn.Linear(hidden_channels, out_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.image_encoder.reset_parameters()
        reset_modules(*self._image_relation_convs(), self.image_blocks)
        self.pool.reset_parameters()
        nn.init.normal_(self.missing, std=1.0 / math.sqrt(self.hidden_channels))
        reset_modules(self.region_convs, self.region_blocks)
        self.head.reset_parameters()

    def _image_relation_convs(self) -> list[nn.ModuleList]:
        """Level-1 convolutions per layer (one per relation of :data:`IMAGE_RELATIONS`)."""
        return [cast(nn.ModuleList, convs) for convs in self.image_convs]

    def region_mask(self, data: HeteroData) -> Tensor:
        """``[N]`` bool: regions holding at least one image."""
        n = data["region"].num_nodes
        if IMAGE_IN_REGION not in data.edge_types:
            return torch.zeros(n, dtype=torch.bool, device=data["region"].pos.device)
        return degree(data[IMAGE_IN_REGION].edge_index[1], n) > 0

    def image_edges(self, data: HeteroData) -> list[tuple[Tensor, Tensor] | None]:
        """``(edge_index, edge_weight)`` per level-1 relation (None where the graph lacks it)."""
        out: list[tuple[Tensor, Tensor] | None] = []
        for et in IMAGE_RELATIONS:
            if et in data.edge_types:
                ei, w, _ = get_edges(data, et, None)
                out.append((ei, w.clamp_min(0.0)))
            else:
                out.append(None)
        return out

    def encode_images(self, x: Tensor, edges: list[tuple[Tensor, Tensor] | None]) -> Tensor:
        """Level 1: image features ``[M, D]`` and relations -> image embeddings ``[M, hidden]``."""
        h = self.image_encoder(x, torch.ones(x.size(0), dtype=torch.bool, device=x.device))
        for convs, block in zip(self._image_relation_convs(), self.image_blocks, strict=True):
            upd = torch.zeros_like(h)
            for conv, rel in zip(convs, edges, strict=True):
                if rel is not None:
                    upd = upd + conv(h, rel[0], rel[1].to(h.dtype))
            h = block(h, upd)
        return h

    def pool_regions(self, data: HeteroData, h_img: Tensor) -> Tensor:
        """Pool image embeddings ``[M, hidden]`` into regions ``[N, hidden]`` (missing token if none)."""
        n = data["region"].num_nodes
        mask = self.region_mask(data)
        if IMAGE_IN_REGION in data.edge_types and h_img.numel():
            ei = data[IMAGE_IN_REGION].edge_index
            pooled = self.pool(h_img[ei[0]], ei[1], dim_size=n)
        else:
            pooled = h_img.new_zeros(n, self.hidden_channels)
        return torch.where(mask.unsqueeze(-1), pooled, self.missing.to(pooled.dtype).expand_as(pooled))

    def forward(self, data: HeteroData) -> Tensor:
        """Region embeddings ``[N, out_channels]`` from the image graph and region adjacency."""
        h_img = self.encode_images(data[IMAGE].x, self.image_edges(data))
        h = self.pool_regions(data, h_img)
        adj_ei, _, _ = get_edges(data, ADJACENT, None)
        for conv, block in zip(self.region_convs, self.region_blocks, strict=True):
            h = block(h, conv(h, adj_ei))
        return self.head(h)
