"""HAFusion (Sun et al., "Urban Region Representation Learning with Attentive Fusion", ICDE 2024), re-implemented.

Written from the paper's description (and its public repository read for the hyper-parameters);
no code is copied. The architecture, per region ``i`` of ``N`` and view ``v``:

1. **Input.** Views are the raw per-region vectors: the mobility view is the OD row (outgoing
   trip counts to every region, ``[N, N]``), the POI and land-use views are category counts.
   POI and land-use go through ``Linear -> ReLU -> Dropout`` to the model width ``d``; the
   mobility rows enter unprojected (the paper's width is the number of regions, ``d = N``).
2. **Intra-view attentive feature learning (intra-AFL)**, per view: region self-attention over
   all ``N`` regions (post-norm transformer blocks). Each block also turns the attention
   matrix itself into features: every entry is expanded to ``c`` channels (a 1x1 map
   ``a_k A_ij + b_k``), each row is pooled by a softmax over its own entries, and the pooled
   ``[N, c]`` is projected to ``d`` and added to the attention output. A deep FC head follows.
3. **Dual-feature attentive fusion (DAFusion).** Inter-view AFL: for each region, its ``V`` view
   embeddings pass an external-attention block (a key memory ``d -> S`` normalised over the
   views, then over the memory, and a value memory ``S -> d``), stacked, plus a deep FC head.
   A learned convex mix (initial 0.9 / 0.1) combines the inter-view and intra-view
   embeddings. View-aware fusion then weighs the views: each view's embedding matrix is
   projected along the region axis (``N -> d'``), a GAT-like pairwise score between views is
   averaged into one softmax weight per view. The weighted sum goes through region-aware
   fusion (plain transformer blocks over all regions), a deep FC, and a deep FC to the
   144-d embedding.
4. **Objectives**, from per-objective linear decoders of the embedding: mobility, the source
   and destination embeddings predicting each region's outgoing trip distribution (cross
   entropy against ``OD / mean(OD)``, summed) and the reverse for incoming trips; POI and
   land-use, the MSE between the decoders' cosine similarity and the cosine similarity of the
   regions' count vectors. The loss is their plain sum.

Defaults (the paper / its NYC configuration): 144-d, 3 intra-AFL, 3 inter-AFL and 3 region-fusion
blocks, 4 heads, ``d' = 64``, memory ``S = 72``, ``c = 32``, dropout 0.1, Adam lr 5e-4,
weight decay 5e-4, 2,000 epochs. Cities with at most 100 regions use the paper's Chicago
configuration (1 / 2 / 3 blocks, 1 head, ``d' = 32``, ``S = 36``).

Differences from the published setting (see experiments/peers/README.md): inputs come from our
region graph (the OD of the graph is both the mobility input and the mobility target, where the
release used two different OD matrices; the POI similarity target is the cosine similarity of
the POI counts, where the release ships a similarity from another source); views the city lacks
are dropped, as are the inter-view and view-aware fusion when one view remains; the similarity
MSE runs over region pairs that both have the modality; above ``max_width`` regions the width is
``wide_city_width`` and the OD rows get a linear projection; the embedding is read in eval mode
(no dropout) after the last epoch.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from experiments.peers.inputs import (
    as_graph,
    cosine_similarity,
    count_view,
    log_progress,
    num_regions,
    od_matrix,
    seed_all,
    training_report,
)

log = logging.getLogger("experiments.peers.hafusion")

#: The views HAFusion uses, in the paper's order (graph modality names).
VIEWS = ("poi", "landuse", "mobility")


@dataclass(frozen=True)
class HAFusionConfig:
    """Hyper-parameters (defaults: the paper's NYC configuration).

    Attributes:
        embedding_dim: Output embedding width.
        intra_blocks: Intra-AFL blocks per view.
        inter_blocks: Inter-AFL (external attention) blocks.
        region_blocks: Region-fusion transformer blocks.
        heads: Attention heads (reduced to the largest divisor of the width when it does not divide it).
        view_dim: ``d'``, the region-axis projection of view-aware fusion.
        memory: ``S``, the external-attention memory size of inter-AFL.
        edge_channels: ``c``, channels the attention matrix is expanded to in intra-AFL.
        feedforward: Transformer feed-forward width.
        dropout: Dropout everywhere.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        epochs: Default training length.
        max_width: Largest city whose width is its region count (the paper's coupling); larger cities
            also recompute each attention block in backward (gradient checkpointing) to bound memory.
        wide_city_width: Width for larger cities.
    """

    embedding_dim: int = 144
    intra_blocks: int = 3
    inter_blocks: int = 3
    region_blocks: int = 3
    heads: int = 4
    view_dim: int = 64
    memory: int = 72
    edge_channels: int = 32
    feedforward: int = 2048
    dropout: float = 0.1
    lr: float = 5e-4
    weight_decay: float = 5e-4
    epochs: int = 2000
    max_width: int = 512
    wide_city_width: int = 180


#: The paper's configuration for its small city (Chicago, 77 regions).
CHICAGO = HAFusionConfig(intra_blocks=1, inter_blocks=2, region_blocks=3, heads=1, view_dim=32, memory=36)


def preset(n_regions: int) -> HAFusionConfig:
    """The paper's configuration for a city of ``n_regions`` (Chicago's up to 100 regions, NYC's above)."""
    return CHICAGO if n_regions <= 100 else HAFusionConfig()


# ----------------------------------------------------------------------------- building blocks


class _SoftmaxPool(torch.autograd.Function):
    """``out[b, k, i] = sum_j softmax_j(s) * s_j + bias_k`` with ``s = scale_k * A[b, i, :]``.

    The channel expansion of intra-AFL, computed one channel at a time so that memory stays
    ``O(N^2)`` rather than ``O(c N^2)`` (2,325 regions x 32 channels would otherwise hold several
    GB of activations). ``bias_k`` cancels inside the softmax, so it only shifts the output.
    """

    @staticmethod
    def forward(ctx: Any, attn: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        outs = []
        for k in range(scale.numel()):
            s = attn * scale[k]
            outs.append(torch.softmax(s, dim=-1).mul_(s).sum(-1))
        g = torch.stack(outs, dim=1)  # [B, c, N], without bias
        ctx.save_for_backward(attn, scale, g)
        return g + bias.view(1, -1, 1)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        attn, scale, g = ctx.saved_tensors
        d_attn = torch.zeros_like(attn)
        d_scale = torch.zeros_like(scale)
        for k in range(scale.numel()):
            s = attn * scale[k]
            p = torch.softmax(s, dim=-1)
            # d g_i / d s_ij = p_ij (1 + s_ij - g_i); in place: two [N, N] buffers per channel
            ds = s.add_(1.0).sub_(g[:, k, :, None]).mul_(p).mul_(grad[:, k, :, None])
            d_scale[k] = (ds * attn).sum()
            d_attn += ds.mul_(scale[k])
        return d_attn, d_scale, grad.sum(dim=(0, 2))


class DeepFC(nn.Sequential):
    """``Linear(d, 2d) -> Linear(2d, 2d) -> LeakyReLU(0.3) -> Linear(2d, out) -> LeakyReLU(0.3)``."""

    def __init__(self, dim: int, out: int) -> None:
        super().__init__(nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, 2 * dim), nn.LeakyReLU(0.3),
                         nn.Linear(2 * dim, out), nn.LeakyReLU(0.3))


class IntraAFLBlock(nn.Module):
    """Post-norm region self-attention block whose attention matrix also feeds an edge-feature term.

    Input/output ``[1, N, d]``.
    """

    def __init__(self, dim: int, heads: int, channels: int, feedforward: int, dropout: float) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.edge_scale = nn.Parameter(torch.empty(channels))
        self.edge_bias = nn.Parameter(torch.empty(channels))
        bound = 1.0  # a 1x1 map from one input channel: fan_in = 1
        nn.init.uniform_(self.edge_scale, -bound, bound)
        nn.init.uniform_(self.edge_bias, -bound, bound)
        self.edge_proj = nn.Linear(channels, dim)
        self.ff = nn.Sequential(nn.Linear(dim, feedforward), nn.ReLU(), nn.Dropout(dropout), nn.Linear(feedforward, dim))
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop1, self.drop2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, a = self.attn(x, x, x, need_weights=True, average_attn_weights=True)  # a: [1, N, N]
        pooled = _SoftmaxPool.apply(a, self.edge_scale, self.edge_bias)  # [1, c, N]
        h = h + self.edge_proj(pooled.transpose(1, 2))
        x = self.norm1(x + self.drop1(h))
        return self.norm2(x + self.drop2(self.ff(x)))


def _run_blocks(blocks: nn.ModuleList | nn.Sequential, h: torch.Tensor, checkpoint: bool) -> torch.Tensor:
    """Apply ``blocks`` in turn; with ``checkpoint`` each block's activations are recomputed in backward.

    Checkpointing keeps one block's ``[heads, N, N]`` attention tensors in memory instead of all of them
    (2,325 regions: ~1.5 GB instead of ~4.5 GB); the RNG state is replayed, so gradients are unchanged.
    """
    from torch.utils.checkpoint import checkpoint as ckpt

    for b in blocks:
        h = ckpt(b, h, use_reentrant=False) if checkpoint and torch.is_grad_enabled() else b(h)
    return h


class IntraAFL(nn.Module):
    """Intra-AFL blocks and a deep FC head: ``[N, d] -> [N, d]``."""

    checkpoint = False

    def __init__(self, dim: int, cfg: HAFusionConfig, heads: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(IntraAFLBlock(dim, heads, cfg.edge_channels, cfg.feedforward, cfg.dropout)
                                    for _ in range(cfg.intra_blocks))
        self.head = DeepFC(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(_run_blocks(self.blocks, x.unsqueeze(0), self.checkpoint).squeeze(0))


class InterAFLBlock(nn.Module):
    """External attention across the views of each region: ``[N, V, d] -> [N, V, d]``."""

    def __init__(self, dim: int, memory: int) -> None:
        super().__init__()
        self.key = nn.Linear(dim, memory, bias=False)
        self.value = nn.Linear(memory, dim, bias=False)
        nn.init.normal_(self.key.weight, std=0.001)
        nn.init.normal_(self.value.weight, std=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.softmax(self.key(x), dim=1)  # normalised over the views
        a = a / a.sum(dim=2, keepdim=True)  # then over the memory slots
        return self.value(a)


class ViewFusion(nn.Module):
    """One softmax weight per view from the view embedding matrices ``[V, N, d]`` (region axis projected)."""

    def __init__(self, n_regions: int, view_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(n_regions, view_dim, bias=False)
        self.score_src = nn.Linear(view_dim, 1)
        self.score_dst = nn.Linear(view_dim, 1)

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        z = self.proj(views.transpose(1, 2))  # [V, d, d']
        f1 = self.score_src(z).squeeze(-1)  # [V, d]
        f2 = self.score_dst(z).squeeze(-1)
        logits = F.leaky_relu(f1[:, None, :] + f2[None, :, :], 0.3)  # [V, V, d]
        return torch.softmax(logits.mean(dim=(1, 2)), dim=0)  # [V]


class HAFusionNet(nn.Module):
    """The HAFusion encoder and its four objective decoders.

    Args:
        in_dims: Input width per view (the mobility view's is ``N``).
        n_regions: ``N``.
        width: Model width ``d``.
        cfg: Hyper-parameters.
        heads: Attention heads (dividing ``width``).
        checkpoint: Recompute each attention block in backward (large cities).
    """

    def __init__(self, in_dims: dict[str, int], n_regions: int, width: int, cfg: HAFusionConfig, heads: int,
                 checkpoint: bool = False) -> None:
        super().__init__()
        self.checkpoint = checkpoint
        self.views = list(in_dims)
        self.inputs = nn.ModuleDict({
            v: nn.Identity() if (v == "mobility" and n == width)
            else nn.Sequential(nn.Linear(n, width), nn.ReLU(), nn.Dropout(cfg.dropout))
            for v, n in in_dims.items()})
        self.intra = nn.ModuleDict({v: IntraAFL(width, cfg, heads) for v in self.views})
        for m in self.intra.values():
            cast(IntraAFL, m).checkpoint = checkpoint
        multi = len(self.views) > 1
        self.inter = (nn.Sequential(*(InterAFLBlock(width, cfg.memory) for _ in range(cfg.inter_blocks)),
                                    DeepFC(width, width)) if multi else None)
        self.mix = nn.Parameter(torch.tensor([0.1, 0.9])) if multi else None  # (intra, inter)
        self.view_fusion = ViewFusion(n_regions, cfg.view_dim) if multi else None
        self.region_fusion = nn.Sequential(*(nn.TransformerEncoderLayer(
            width, heads, cfg.feedforward, cfg.dropout, batch_first=True) for _ in range(cfg.region_blocks)))
        self.region_head = DeepFC(width, width)
        self.out = DeepFC(width, cfg.embedding_dim)
        dec: list[str] = [v for v in ("poi", "landuse") if v in self.views]
        dec += ["source", "dest"] if "mobility" in self.views else []
        self.decoders = nn.ModuleDict({k: nn.Linear(cfg.embedding_dim, cfg.embedding_dim) for k in dec})

    def forward(self, xs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``xs``: view -> ``[N, F_v]``. Returns the embedding ``[N, D]`` and each decoder's ``[N, D]``."""
        intra = torch.stack([self.intra[v](self.inputs[v](xs[v])) for v in self.views])  # [V, N, d]
        if self.inter is not None and self.mix is not None and self.view_fusion is not None:
            inter = self.inter(intra.transpose(0, 1)).transpose(0, 1)
            w = self.mix / self.mix.sum()
            h = w[0] * intra + w[1] * inter
            fused = torch.einsum("v,vnd->nd", self.view_fusion(h), h)
        else:
            fused = intra[0]
        z = self.region_head(_run_blocks(self.region_fusion, fused.unsqueeze(0), self.checkpoint).squeeze(0))
        emb = self.out(z)
        return emb, {k: dec(emb) for k, dec in self.decoders.items()}


# ----------------------------------------------------------------------------- objectives


def mobility_loss(src: torch.Tensor, dst: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Cross entropy of the outgoing (``softmax_j s_i . t_j``) and incoming trip distributions, summed.

    ``flow`` ``[N, N]`` is the OD matrix scaled to mean 1 (row = origin).
    """
    out = -(flow * torch.log_softmax(src @ dst.T, dim=-1)).sum()
    return out - (flow.T * torch.log_softmax(dst @ src.T, dim=-1)).sum()


def similarity_loss(emb: torch.Tensor, target: torch.Tensor, pair_mask: torch.Tensor) -> torch.Tensor:
    """MSE between the embeddings' cosine similarity and ``target`` over the pairs in ``pair_mask``."""
    unit = F.normalize(emb, dim=1, eps=1e-8)
    sim = unit @ unit.T
    return ((sim - target) ** 2 * pair_mask).sum() / pair_mask.sum().clamp_min(1.0)


# ----------------------------------------------------------------------------- training


def _heads(width: int, wanted: int) -> int:
    return max(h for h in range(1, wanted + 1) if width % h == 0)


def fit_hafusion(data_or_bundle: Any, seed: int, epochs: int | None = None,
                 config: HAFusionConfig | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Train HAFusion on one city and return its embedding ``[N, D]`` and a run report.

    Args:
        data_or_bundle: Region graph (``HeteroData``) or ``CityBundle``.
        seed: Seed of weights and dropout (a run is deterministic for a seed on CPU).
        epochs: Training epochs (default: the config's, the paper's 2,000).
        config: Hyper-parameters (default: :func:`preset` for the city's size).

    Raises:
        ValueError: when the city has none of HAFusion's views (mobility, POI, land use).
    """
    data = as_graph(data_or_bundle)
    n = num_regions(data)
    cfg = config or preset(n)
    epochs = cfg.epochs if epochs is None else epochs
    seed_all(seed)

    feats: dict[str, np.ndarray] = {}
    targets: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    dropped = [m for m in data.modalities if m not in VIEWS]
    od = od_matrix(data)
    for v in VIEWS:
        if v == "mobility":
            if od is not None:
                feats[v] = od
                targets[v] = (od / max(od.mean(), 1e-12), np.ones(n, dtype=bool))
            elif "mobility" in data.modalities:
                dropped.append("mobility (no OD edges)")
            continue
        cv = count_view(data, v)
        if cv is None:
            continue
        feats[v] = cv.counts
        targets[v] = (cosine_similarity(cv.counts), cv.mask)
    if not feats:
        raise ValueError(f"HAFusion needs at least one of {', '.join(VIEWS)}; the graph has "
                         f"{', '.join(data.modalities) or 'none'}")
    missing = [v for v in VIEWS if v not in feats]
    width = n if n <= cfg.max_width else cfg.wide_city_width
    heads = _heads(width, cfg.heads)
    log.info("hafusion: %d regions, views %s, width %d, %d heads%s%s%s", n, list(feats), width, heads,
             f"; views/losses dropped (not in the graph): {missing}" if missing else "",
             f"; modalities it does not use: {dropped}" if dropped else "",
             "; single view: inter-view and view-aware fusion dropped" if len(feats) == 1 else "")
    if heads != cfg.heads:
        log.info("hafusion: %d heads do not divide width %d; using %d", cfg.heads, width, heads)
    if "mobility" in feats and width != n:
        log.info("hafusion: %d regions > max_width %d: OD rows projected to width %d", n, cfg.max_width, width)

    # Build the model before touching the RNG for anything else, so the seed fixes the weights.
    model = HAFusionNet({v: f.shape[1] for v, f in feats.items()}, n, width, cfg, heads, checkpoint=n > cfg.max_width)
    xs = {v: torch.tensor(f, dtype=torch.float32) for v, f in feats.items()}
    tgt = {v: torch.tensor(t, dtype=torch.float32) for v, (t, _) in targets.items()}
    pair = {v: torch.tensor(np.outer(m, m), dtype=torch.float32) for v, (_, m) in targets.items()}
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    history: list[dict[str, float]] = []
    t0, c0 = time.perf_counter(), time.process_time()
    for epoch in range(epochs):
        model.train()
        _, dec = model(xs)
        parts: dict[str, torch.Tensor] = {}
        if "mobility" in tgt:
            parts["mobility"] = mobility_loss(dec["source"], dec["dest"], tgt["mobility"])
        for v in ("poi", "landuse"):
            if v in tgt:
                parts[v] = similarity_loss(dec[v], tgt[v], pair[v])
        loss = torch.stack(list(parts.values())).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append({"epoch": epoch, "total": loss.item(), **{k: p.item() for k, p in parts.items()}})
        log_progress(log, "hafusion", epoch, epochs, history[-1]["total"], t0)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    model.eval()
    with torch.no_grad():
        emb, _ = model(xs)
    report = {"peer": "hafusion", "seed": seed, "epochs": epochs, "views": list(feats), "dropped_views": missing,
              "unused_modalities": dropped, "width": width, "heads": heads, "config": asdict(cfg),
              **training_report(history, wall, cpu)}
    return emb.numpy(), report
