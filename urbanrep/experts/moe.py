"""Mixture of experts per modality: a per-region gate over the dedicated and shared experts."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch_geometric.data import HeteroData

from urbanrep.errors import ConfigError
from urbanrep.experts.base import Expert, reset_modules

ROUTINGS = ("softmax", "topk")


@dataclass(frozen=True)
class MoEConfig:
    """Mixture-of-experts settings (mirrors :class:`ModalityMoE` and the shared experts).

    Attributes:
        num_shared: Shared GNN experts over region adjacency (0: the dedicated expert alone).
        routing: ``"softmax"`` (dense: every expert weighted) or ``"topk"`` (sparse: the ``top_k``
            largest gate values, renormalised).
        top_k: Experts kept per region with ``"topk"`` routing.
        gate_dropout: Dropout on the gate input.
        region_attention: Heads of a region self-attention block on each modality's expert
            output (0, default: none). In the spirit of HAFusion's intra-view attention: every
            region with the modality's data attends to every other such region, so a region can
            borrow from look-alikes anywhere in the city, not only from its graph neighbours.
            Pre-norm and residual; regions without the modality's data keep their output. Costs
            ``O(N^2)`` memory per step (with mini-batches, attention stays inside each batch).
    """

    num_shared: int = 0
    routing: str = "softmax"
    top_k: int = 1
    gate_dropout: float = 0.0
    region_attention: int = 0

    def __post_init__(self) -> None:
        if self.num_shared < 0:
            raise ConfigError(f"MoEConfig.num_shared must be >= 0, got {self.num_shared}")
        if self.routing not in ROUTINGS:
            raise ConfigError(f"MoEConfig.routing must be one of {ROUTINGS}, got {self.routing!r}")
        if not 1 <= self.top_k <= self.num_shared + 1 and self.num_shared > 0:
            raise ConfigError(f"MoEConfig.top_k must be in [1, num_shared + 1 = {self.num_shared + 1}], "
                              f"got {self.top_k}")
        if self.region_attention < 0:
            raise ConfigError(f"MoEConfig.region_attention must be >= 0 heads (0 switches it off), "
                              f"got {self.region_attention}")


def load_balancing_loss(gates: Tensor, mask: Tensor) -> Tensor:
    """Switch-Transformer auxiliary loss ``E * sum_e f_e * P_e`` (1.0 when perfectly balanced).

    Args:
        gates: ``[N, E]`` dense softmax gate probabilities.
        mask: ``[N]`` bool, regions that count.

    Returns:
        Scalar; ``f_e`` is the share of regions whose top-1 expert is ``e``, ``P_e`` the mean
        gate probability of ``e``.
    """
    g = gates[mask]
    if g.size(0) == 0:
        return gates.sum() * 0.0
    num_experts = g.size(1)
    f = torch.nn.functional.one_hot(g.argmax(-1), num_experts).to(g.dtype).mean(0)
    p = g.mean(0)
    return num_experts * (f * p).sum()


class RegionSelfAttention(nn.Module):
    """Pre-norm residual self-attention over the regions that have a modality's data.

    ``x + attention(norm(x))`` for those regions, attending only to each other; regions without
    data are not attended to and keep ``x``. With fewer than two such regions it returns ``x``.

    Args:
        channels: Width ``C``.
        heads: Attention heads (must divide ``C``).

    Shapes:
        ``forward(x [N, C], mask [N] bool)`` -> ``[N, C]``.
    """

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        if channels % heads:
            raise ConfigError(f"MoEConfig.region_attention={heads} heads must divide the expert width {channels}")
        self.norm = nn.LayerNorm(channels)
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)

    def reset_parameters(self) -> None:
        self.norm.reset_parameters()
        self.attn._reset_parameters()

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """Attend over the regions in ``mask``; see the class docstring."""
        if int(mask.sum()) < 2:
            return x
        q = self.norm(x).unsqueeze(0)
        h, _ = self.attn(q, q, q, key_padding_mask=~mask.unsqueeze(0), need_weights=False)
        return x + h.squeeze(0) * mask.unsqueeze(-1).to(h.dtype)


class ModalityMoE(nn.Module):
    """Per-region gate over one dedicated expert and ``k`` shared experts.

    The gate sees only the experts' outputs (the common interface): for region ``i`` it scores
    ``[e_0(i), ..., e_k(i)]`` with one linear layer, turns the scores into weights by softmax
    (or top-k + renormalised softmax) and returns the weighted sum. With no shared experts the
    module returns the dedicated expert unchanged.

    Args:
        dedicated: The modality's own expert.
        shared: Shared experts for this modality (same ``out_channels``).
        routing: ``"softmax"`` or ``"topk"``.
        top_k: Experts kept per region for ``"topk"``.
        gate_dropout: Dropout on the gate input.
        region_attention: Heads of the region self-attention block after the gate (0: none; see
            :class:`MoEConfig`). Must divide the experts' ``out_channels``.

    Shapes:
        ``forward(data)`` -> ``(out [N, C], aux_loss scalar, gates [N, 1 + k])``.
    """

    def __init__(self, dedicated: Expert, shared: list[Expert] | None = None, routing: str = "softmax",
                 top_k: int = 1, gate_dropout: float = 0.0, region_attention: int = 0) -> None:
        super().__init__()
        self.dedicated = dedicated
        self.shared = nn.ModuleList(shared or [])
        self.routing, self.top_k = routing, top_k
        self.modality = dedicated.modality
        self.out_channels = dedicated.out_channels
        num = 1 + len(self.shared)
        self.gate = nn.Sequential(nn.Dropout(gate_dropout), nn.Linear(num * self.out_channels, num))
        self.attention = RegionSelfAttention(self.out_channels, region_attention) if region_attention else None
        self.reset_parameters(experts=False)

    def reset_parameters(self, experts: bool = True) -> None:
        """Re-initialise the gate (and, by default, the experts)."""
        if experts:
            reset_modules(self.dedicated, self.shared)
        lin = self.gate[1]
        assert isinstance(lin, nn.Linear)
        lin.reset_parameters()
        nn.init.zeros_(lin.weight)  # start from uniform routing
        nn.init.zeros_(lin.bias)
        if self.attention is not None:
            self.attention.reset_parameters()

    def region_mask(self, data: HeteroData) -> Tensor:
        """``[N]`` bool: regions where the modality has data."""
        return self.dedicated.region_mask(data)

    def forward(self, data: HeteroData) -> tuple[Tensor, Tensor, Tensor]:
        """Gate the experts per region; see the class docstring for shapes."""
        out, aux, gates = self._gated(data)
        if self.attention is not None:
            out = self.attention(out, self.region_mask(data))
        return out, aux, gates

    def _gated(self, data: HeteroData) -> tuple[Tensor, Tensor, Tensor]:
        out = self.dedicated(data)
        if not len(self.shared):
            return out, out.new_zeros(()), out.new_ones(out.size(0), 1)
        outs = torch.stack([out, *[e(data) for e in self.shared]], dim=1)  # [N, E, C]
        logits = self.gate(outs.flatten(1))
        probs = torch.softmax(logits, -1)
        aux = out.new_zeros(())
        if self.routing == "topk" and self.top_k < probs.size(1):
            top = logits.topk(self.top_k, dim=-1).indices
            keep = torch.zeros_like(probs, dtype=torch.bool).scatter_(1, top, True)
            gates = torch.softmax(logits.masked_fill(~keep, float("-inf")), -1)
            aux = load_balancing_loss(probs, self.region_mask(data))
        else:
            gates = probs
        return (gates.unsqueeze(-1) * outs).sum(1), aux, gates
