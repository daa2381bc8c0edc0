"""HREP (Zhou et al., "Heterogeneous Region Embedding with Prompt Learning", AAAI 2023), re-implemented.

Written from the paper's description (its public repository read for the hyper-parameters); no
code is copied. This is HREP's region-embedding stage (the heterogeneous region embedding
module); its second stage, prompt learning, tunes a prompt on each downstream task's labels and
is left out: the harness scores target-free embeddings with the same probe for every method.

Relations (each a graph over the ``N`` regions, self loops included), as many as the city has:

* ``adjacent``: spatial neighbours (the region graph's adjacency edges);
* ``poi``: each region's ``k`` most similar regions by cosine similarity of POI category counts;
* ``source`` / ``destination``: the ``k`` most similar regions by cosine similarity of the
  outgoing (OD rows) / incoming (OD columns) trip counts.

Model: every region starts from a fixed random vector (not trained) and every relation from a
fixed random relation vector ``r``. A relation-aware GCN of ``L`` layers, whose GCN weights and
batch norms are shared by all relations, updates each relation's region embeddings as
``h <- h + LeakyReLU(BN(GCN(h * r)))`` (the last layer without residual, norm and activation)
and each relation vector as ``r <- W_l r``. A cross-relation multi-head attention (per region,
over its relation embeddings) mixes them with a learned residual weight (initial 0.95). An
attentive fusion scores each relation (``q . LeakyReLU(W h)`` averaged over regions), and the
softmax-weighted sum is the region embedding ``e``. Each objective reads ``e * r_rel``:

* ``adjacent``: triplet margin loss (a random neighbour as positive, a random non-neighbour as
  negative, resampled every epoch);
* ``poi``: MSE between the inner products ``(e * r)(e * r)^T`` and the POI cosine similarity;
* ``source``/``destination``: cross entropy of each region's outgoing trip distribution
  (``softmax_j s_i . d_j``) and of its incoming one against ``OD / mean(OD)``.

Defaults (the paper's repository): 144-d, 3 GCN layers, ``k = 10``, 4 attention heads, dropout
0.1, Adam lr 1e-3, weight decay 5e-3, 2,000 epochs.

Differences (see experiments/peers/README.md): no prompt learning (supervised); the public
training script pairs each loss with another relation's vector and scores the incoming trips
against the untransposed OD matrix, here each loss uses its own relation and the incoming
distribution is the OD column, as the paper writes; a city without POIs or mobility drops those
relations and losses (land use and imagery are not HREP inputs); the POI MSE runs over region
pairs that both have POIs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from experiments.peers.hafusion import mobility_loss
from experiments.peers.inputs import (
    adjacency_lists,
    as_graph,
    cosine_similarity,
    count_view,
    knn_similarity_edges,
    log_progress,
    num_regions,
    od_matrix,
    seed_all,
    training_report,
)

log = logging.getLogger("experiments.peers.hrep")

#: Relations in a fixed order; ``adjacent`` is always present.
RELATIONS = ("adjacent", "poi", "source", "destination")


@dataclass(frozen=True)
class HREPConfig:
    """Hyper-parameters (defaults: the paper's repository).

    Attributes:
        embedding_dim: Embedding width (also the random input width).
        gcn_layers: Relation-aware GCN layers.
        k: Neighbours of the similarity relations (the region itself included).
        heads: Cross-relation attention heads.
        dropout: Dropout after each hidden GCN layer.
        triplet_margin: Margin of the spatial triplet loss.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        epochs: Default training length.
    """

    embedding_dim: int = 144
    gcn_layers: int = 3
    k: int = 10
    heads: int = 4
    dropout: float = 0.1
    triplet_margin: float = 1.0
    lr: float = 1e-3
    weight_decay: float = 5e-3
    epochs: int = 2000


class HREPNet(nn.Module):
    """Relation-aware GCN, cross-relation attention and attentive fusion.

    Args:
        relations: Relation names, in order.
        cfg: Hyper-parameters.
    """

    def __init__(self, relations: list[str], cfg: HREPConfig) -> None:
        from torch_geometric.nn import GCNConv

        super().__init__()
        d = cfg.embedding_dim
        self.relations = relations
        self.dropout = cfg.dropout
        self.gcns = nn.ModuleList(GCNConv(d, d) for _ in range(cfg.gcn_layers))
        self.norms = nn.ModuleList(nn.BatchNorm1d(d) for _ in range(cfg.gcn_layers - 1))
        self.rel_maps = nn.ModuleList(nn.Linear(d, d) for _ in range(cfg.gcn_layers))
        self.cross = nn.MultiheadAttention(d, cfg.heads)
        self.cross_mix = nn.Parameter(torch.full((len(relations),), 0.95))
        self.query = nn.Parameter(torch.randn(d))
        self.score = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, rel: dict[str, torch.Tensor], edges: dict[str, torch.Tensor]
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """Region embedding ``[N, d]``, each relation's ``e * r`` ``[N, d]`` and the relation weights ``[R]``.

        Args:
            x: Fixed random region inputs ``[N, d]``.
            rel: Fixed random relation vectors ``[d]`` by relation.
            edges: ``[2, E]`` edge index by relation.
        """
        hs, rs = [], []
        for name in self.relations:
            h, r = x, rel[name]
            for i, gcn in enumerate(self.gcns):
                z = gcn(h * r, edges[name])
                r = self.rel_maps[i](r)
                if i < len(self.norms):
                    h = F.dropout(h + F.leaky_relu(self.norms[i](z)), self.dropout, self.training)
                else:
                    h = z
            hs.append(h)
            rs.append(r)
        stack = torch.stack(hs)  # [R, N, d]: sequence of relations, batch of regions
        mixed, _ = self.cross(stack, stack, stack, need_weights=False)
        a = self.cross_mix.view(-1, 1, 1)
        fused = a * mixed + (1 - a) * stack
        weights = torch.softmax((F.leaky_relu(self.score(fused)) @ self.query).mean(dim=1), dim=0)  # [R]
        emb = torch.einsum("r,rnd->nd", weights, fused)
        return emb, {name: emb * r for name, r in zip(self.relations, rs, strict=True)}, weights


def _sample_triplets(neigh: list[np.ndarray], is_neigh: np.ndarray, rng: np.random.Generator
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Anchors with a neighbour, one random neighbour each, one random non-neighbour each."""
    n = len(neigh)
    anchors = np.array([i for i in range(n) if len(neigh[i]) and len(neigh[i]) < n - 1], dtype=np.int64)
    pos = np.array([neigh[i][rng.integers(len(neigh[i]))] for i in anchors], dtype=np.int64)
    neg = rng.integers(n, size=len(anchors))
    bad = is_neigh[anchors, neg] | (neg == anchors)
    while bad.any():
        neg[bad] = rng.integers(n, size=int(bad.sum()))
        bad = is_neigh[anchors, neg] | (neg == anchors)
    return anchors, pos, neg


def fit_hrep(data_or_bundle: Any, seed: int, epochs: int | None = None,
             config: HREPConfig | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Train HREP's region-embedding module on one city; returns the embedding ``[N, D]`` and a run report.

    Args:
        data_or_bundle: Region graph (``HeteroData``) or ``CityBundle``.
        seed: Seed of the random inputs, weights, dropout and triplet sampling.
        epochs: Training epochs (default: the config's, the paper's 2,000).
        config: Hyper-parameters.
    """
    data = as_graph(data_or_bundle)
    cfg = config or HREPConfig()
    epochs = cfg.epochs if epochs is None else epochs
    n = num_regions(data)
    rng = seed_all(seed)

    neigh = adjacency_lists(data)
    is_neigh = np.zeros((n, n), dtype=bool)
    for i, nb in enumerate(neigh):
        is_neigh[i, nb] = True
    edge_np: dict[str, np.ndarray] = {
        "adjacent": np.unique(np.concatenate([np.stack(np.nonzero(is_neigh | is_neigh.T)),
                                              np.tile(np.arange(n), (2, 1))], axis=1), axis=1)}
    poi = count_view(data, "poi")
    poi_target = None
    if poi is not None:
        poi_sim = cosine_similarity(poi.counts)
        edge_np["poi"] = knn_similarity_edges(poi_sim, cfg.k, poi.mask)
        poi_target = (poi_sim, poi.mask)
    od = od_matrix(data)
    if od is not None:
        out_mask, in_mask = od.sum(axis=1) > 0, od.sum(axis=0) > 0
        edge_np["source"] = knn_similarity_edges(cosine_similarity(od), cfg.k, out_mask)
        edge_np["destination"] = knn_similarity_edges(cosine_similarity(od.T), cfg.k, in_mask)
    relations = [r for r in RELATIONS if r in edge_np]
    missing = [r for r in RELATIONS if r not in edge_np]
    unused = [m for m in data.modalities if m not in ("poi", "mobility")]
    log.info("hrep: %d regions, relations %s%s%s", n, relations,
             f"; relations/losses dropped (not in the graph): {missing}" if missing else "",
             f"; modalities it does not use: {unused}" if unused else "")

    d = cfg.embedding_dim
    x = torch.randn(n, d)
    rel = {r: torch.randn(d) for r in RELATIONS}  # drawn for every relation: the same inputs whatever is dropped
    model = HREPNet(relations, cfg)
    edges = {r: torch.from_numpy(e) for r, e in edge_np.items()}
    flow = torch.tensor(od / max(od.mean(), 1e-12), dtype=torch.float32) if od is not None else None
    if poi_target is not None:
        poi_t = torch.tensor(poi_target[0], dtype=torch.float32)
        poi_pairs = torch.tensor(np.outer(poi_target[1], poi_target[1]), dtype=torch.float32)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    triplet = nn.TripletMarginLoss(margin=cfg.triplet_margin)
    history: list[dict[str, float]] = []
    t0, c0 = time.perf_counter(), time.process_time()
    for epoch in range(epochs):
        model.train()
        _, outs, _ = model(x, rel, edges)
        anchors, pos, neg = _sample_triplets(neigh, is_neigh, rng)
        g = outs["adjacent"]
        parts = {"adjacent": triplet(g[anchors], g[pos], g[neg])}
        if poi_target is not None:
            p = outs["poi"]
            parts["poi"] = (((p @ p.T - poi_t) ** 2) * poi_pairs).sum() / poi_pairs.sum().clamp_min(1.0)
        if flow is not None:
            parts["mobility"] = mobility_loss(outs["source"], outs["destination"], flow)
        loss = torch.stack(list(parts.values())).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append({"epoch": epoch, "total": loss.item(), **{k: v.item() for k, v in parts.items()}})
        log_progress(log, "hrep", epoch, epochs, history[-1]["total"], t0)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    model.eval()
    with torch.no_grad():
        emb, _, weights = model(x, rel, edges)
    report = {"peer": "hrep", "seed": seed, "epochs": epochs, "views": relations, "dropped_views": missing,
              "unused_modalities": unused, "relation_weights": dict(zip(relations, weights.tolist(), strict=True)),
              "config": asdict(cfg),
              **training_report(history, wall, cpu)}
    return emb.numpy(), report
