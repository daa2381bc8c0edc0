"""Spatially-aware fusion: region-specific modality weights from embeddings and spatial context."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from urbanrep.errors import ConfigError
from urbanrep.experts.sparse import mean_operator

FUSION_MODES = ("spatial", "global")
FUSION_PRIORS = ("none", "coherence")


@dataclass(frozen=True)
class FusionConfig:
    """Fusion settings (mirrors :class:`SpatialFusion`).

    Attributes:
        mode: ``"spatial"``: weights per region from its modality embeddings, their neighbour
            means over adjacency and a positional encoding of ``pos``; ``"global"``
            (ablation): one learned weight per modality, the same for every region.
        hidden_channels: Width of the scoring network.
        pos_frequencies: Octaves of the sinusoidal positional encoding (0: no position).
        use_neighbors: Include the neighbour mean of each modality embedding.
        dropout: Dropout inside the scoring network.
        prior: ``"coherence"``: add ``log`` of each modality's noise prior (from the spatial
            coherence of its input, :mod:`urbanrep.fusion.information`) to the scores, and
            weight the input-retention loss by it, so noise-like modalities get weights near 0
            (default; it changes nothing where every modality is spatially structured);
            ``"none"``: learned scores only.
    """

    mode: str = "spatial"
    hidden_channels: int = 64
    pos_frequencies: int = 4
    use_neighbors: bool = True
    dropout: float = 0.0
    prior: str = "coherence"

    def __post_init__(self) -> None:
        if self.mode not in FUSION_MODES:
            raise ConfigError(f"FusionConfig.mode must be one of {FUSION_MODES}, got {self.mode!r}")
        if self.prior not in FUSION_PRIORS:
            raise ConfigError(f"FusionConfig.prior must be one of {FUSION_PRIORS}, got {self.prior!r}")
        if self.hidden_channels < 1 or self.pos_frequencies < 0:
            raise ConfigError("FusionConfig.hidden_channels must be >= 1 and pos_frequencies >= 0")


def positional_encoding(pos: Tensor, num_frequencies: int) -> Tensor:
    """Multi-scale sinusoidal encoding of metric positions.

    Positions are centred on their mean and scaled by their overall standard deviation (both
    invariant to region order and isotropic), then encoded as ``sin/cos(2^k * pi * p)`` for
    ``k < num_frequencies``.

    Args:
        pos: ``[N, 2]`` coordinates.
        num_frequencies: Octaves ``L``.

    Returns:
        ``[N, 4 L]``.
    """
    p = pos.double()
    p = p - p.mean(0)
    p = (p / p.pow(2).sum(1).mean().sqrt().clamp_min(1e-9)).to(pos.dtype)
    freqs = (2.0 ** torch.arange(num_frequencies, device=pos.device, dtype=pos.dtype)) * math.pi
    ang = (p.unsqueeze(-1) * freqs).flatten(1)
    return torch.cat([torch.sin(ang), torch.cos(ang)], dim=-1)


class SpatialFusion(nn.Module):
    """Fuse ``M`` modality embeddings per region with region-specific, masked softmax weights.

    Spatial mode scores modality ``m`` at region ``i`` by additive attention::

        s_im = v^T tanh(W_z z_im + W_n mean_{j ~ i} z_jm + W_p PE(pos_i) + e_m)

    where ``j ~ i`` runs over region adjacency and ``e_m`` is a learned modality embedding;
    ``w_i = softmax_m(s_i)`` over the modalities present at ``i`` (masked ones get weight 0) and
    the fused embedding is ``sum_m w_im z_im``. Global mode replaces ``s_im`` by a learned
    ``s_m``. A region with no modality at all is not left blank: its weights are the unmasked
    softmax over every modality, whose expert outputs there come from the learned "missing"
    token and the messages of its neighbours (an embedding inferred from spatial context).

    Args:
        num_modalities: ``M``.
        channels: Width ``C`` of each modality embedding.
        hidden_channels: Width of the scoring network.
        mode: ``"spatial"`` or ``"global"``.
        pos_frequencies: Octaves of the positional encoding (0: none).
        use_neighbors: Use neighbour means.
        dropout: Dropout in the scoring network.
    """

    def __init__(self, num_modalities: int, channels: int, hidden_channels: int = 64, mode: str = "spatial",
                 pos_frequencies: int = 4, use_neighbors: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        if mode not in FUSION_MODES:
            raise ConfigError(f"fusion mode must be one of {FUSION_MODES}, got {mode!r}")
        self.num_modalities, self.channels, self.mode = num_modalities, channels, mode
        self.pos_frequencies, self.use_neighbors = pos_frequencies, use_neighbors
        self.lin_z = nn.Linear(channels, hidden_channels)
        self.lin_n = nn.Linear(channels, hidden_channels, bias=False) if use_neighbors else None
        self.lin_p = nn.Linear(4 * pos_frequencies, hidden_channels, bias=False) if pos_frequencies else None
        self.modality_emb = nn.Parameter(torch.zeros(num_modalities, hidden_channels))
        self.score = nn.Linear(hidden_channels, 1, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.global_logits = nn.Parameter(torch.zeros(num_modalities))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for lin in (self.lin_z, self.lin_n, self.lin_p, self.score):
            if lin is not None:
                lin.reset_parameters()
        nn.init.normal_(self.modality_emb, std=0.1)
        nn.init.zeros_(self.global_logits)

    def logits(self, z: Tensor, edge_index: Tensor, pos: Tensor) -> Tensor:
        """Unmasked scores ``[N, M]`` of ``z`` ``[N, M, C]``."""
        n = z.size(0)
        if self.mode == "global":
            return self.global_logits.to(z.dtype).expand(n, -1)
        h = self.lin_z(z) + self.modality_emb.to(z.dtype)
        if self.lin_n is not None:
            nb = mean_operator(edge_index, n) @ z.flatten(1)  # neighbour means (cached sparse operator)
            h = h + self.lin_n(nb.view_as(z))
        if self.lin_p is not None:
            h = h + self.lin_p(positional_encoding(pos, self.pos_frequencies).to(z.dtype)).unsqueeze(1)
        return self.score(self.dropout(torch.tanh(h))).squeeze(-1)

    def forward(self, z: Tensor, mask: Tensor, edge_index: Tensor, pos: Tensor,
                prior: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Fuse modality embeddings.

        Args:
            z: ``[N, M, C]`` modality embeddings.
            mask: ``[N, M]`` bool, modality present at the region.
            edge_index: ``[2, E]`` region adjacency.
            pos: ``[N, 2]`` region centroids.
            prior: Optional ``[M]`` positive prior weights; ``log(prior)`` is added to every
                region's scores (the softmax then multiplies the weights by ``prior``).

        Returns:
            ``(fused [N, C], weights [N, M])``; weights sum to 1 over present modalities (over
            all modalities for a region with none).
        """
        any_present = mask.any(-1, keepdim=True)
        usable = mask | ~any_present  # a region without data falls back to every (context-only) modality
        logits = self.logits(z, edge_index, pos)
        if prior is not None:
            logits = logits + prior.to(logits.dtype).log()
        logits = logits.masked_fill(~usable, float("-inf"))
        weights = torch.softmax(logits, -1)
        weights = torch.where(usable, weights, torch.zeros_like(weights))
        return (weights.unsqueeze(-1) * z).sum(1), weights
