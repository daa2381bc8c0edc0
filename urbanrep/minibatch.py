"""Mini-batch training with neighbour-sampled region subgraphs, for graphs too large for one step.

:func:`train` in :mod:`urbanrep.train` stays full-graph (the default, exact and resumable).
:func:`train_minibatch` trains the same :class:`~urbanrep.network.RegionModel` on seeded random
batches of regions: each batch of ``batch_size`` seed regions is grown by ``len(num_neighbors)``
hops over the union of every region-region edge type (adjacency and each modality view, both
directions), keeping at most ``num_neighbors[h]`` neighbours per node at hop ``h`` (GraphSAGE-style
sampling), and the induced sub-``HeteroData`` (same schema: region features, masks, every edge
type restricted to the sampled regions, plus the street-view images of those regions) goes
through the model's own ``forward`` and ``loss``. One epoch is one pass over all regions. The
loss is taken over the whole sampled subgraph (seed regions and their sampled context), so the
contrastive negatives of a batch are the regions it holds.

The sampler is pure numpy (CSR + vectorised per-node sampling), so it needs neither ``pyg-lib``
nor ``torch-sparse``. Inference is one full-graph forward pass without gradients (``"full"``,
exact; memory is activations only) or, for graphs whose forward pass itself does not fit,
batched over sampled subgraphs (``"sampled"``, approximate: seed rows only are kept).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch_geometric.data import HeteroData

from urbanrep.errors import ConfigError
from urbanrep.graphs.schema import IMAGE, IMAGE_IN_REGION, REGION, validate_graph
from urbanrep.network import GraphMetadata, ModelConfig, RegionModel
from urbanrep.train import (
    TrainConfig,
    TrainResult,
    _amp_context,
    _num_threads,
    optimisation_step,
    resolve_device,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MiniBatchConfig:
    """Neighbour-sampled mini-batch settings (used with a :class:`~urbanrep.train.TrainConfig`).

    Attributes:
        batch_size: Seed regions per step.
        num_neighbors: Neighbours kept per node at each hop (``-1``: all); the number of hops
            should cover the model's receptive field (expert layers + 1 for the spatial fusion).
        inference: ``"full"``: one exact full-graph forward pass without gradients;
            ``"sampled"``: batches of ``inference_batch_size`` seeds over sampled subgraphs.
        inference_batch_size: Seeds per inference batch (``"sampled"`` only).
    """

    batch_size: int = 1024
    num_neighbors: tuple[int, ...] = (10, 10, 5)
    inference: Literal["full", "sampled"] = "full"
    inference_batch_size: int = 4096

    def __post_init__(self) -> None:
        object.__setattr__(self, "num_neighbors", tuple(int(k) for k in self.num_neighbors))
        if self.batch_size < 1 or self.inference_batch_size < 1:
            raise ConfigError("MiniBatchConfig.batch_size and inference_batch_size must be >= 1")
        if not self.num_neighbors or any(k == 0 or k < -1 for k in self.num_neighbors):
            raise ConfigError(f"MiniBatchConfig.num_neighbors={self.num_neighbors}: give one entry per hop, "
                              "each >= 1 or -1 (all neighbours)")
        if self.inference not in ("full", "sampled"):
            raise ConfigError(f"MiniBatchConfig.inference={self.inference!r}; use 'full' or 'sampled'")


class RegionSampler:
    """Seeded k-hop neighbour sampling over the union of a graph's region-region edges.

    Args:
        data: A region graph.
        num_neighbors: Neighbours kept per node at each hop (``-1``: all).
    """

    def __init__(self, data: HeteroData, num_neighbors: tuple[int, ...]) -> None:
        self.n = int(data[REGION].num_nodes)
        self.num_neighbors = tuple(num_neighbors)
        src, dst = [], []
        for et in data.edge_types:
            if et[0] == REGION and et[2] == REGION:
                ei = data[et].edge_index.cpu().numpy()
                src += [ei[0], ei[1]]
                dst += [ei[1], ei[0]]
        s = np.concatenate(src) if src else np.zeros(0, np.int64)
        d = np.concatenate(dst) if dst else np.zeros(0, np.int64)
        key = np.unique(d.astype(np.int64) * self.n + s)
        key = key[(key // self.n) != (key % self.n)]
        self.col = (key % self.n).astype(np.int64)  # neighbours of node r: col[ptr[r]:ptr[r+1]]
        self.ptr = np.zeros(self.n + 1, np.int64)
        np.cumsum(np.bincount(key // self.n, minlength=self.n), out=self.ptr[1:])
        self.image_region: np.ndarray | None = None
        if IMAGE in data.node_types and IMAGE_IN_REGION in data.edge_types:
            ei = data[IMAGE_IN_REGION].edge_index.cpu().numpy()
            img_region = np.full(int(data[IMAGE].num_nodes), -1, np.int64)
            img_region[ei[0]] = ei[1]
            self.image_region = img_region

    def sample(self, seeds: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Sorted region positions of the sampled subgraph around ``seeds`` (seeds included)."""
        seen = np.zeros(self.n, dtype=bool)
        frontier = np.unique(np.asarray(seeds, dtype=np.int64))
        seen[frontier] = True
        parts = [frontier]
        for fanout in self.num_neighbors:
            if not len(frontier):
                break
            start = self.ptr[frontier]
            deg = self.ptr[frontier + 1] - start
            total = int(deg.sum())
            if not total:
                break
            offset = np.cumsum(deg) - deg
            group = np.repeat(np.arange(len(frontier)), deg)
            within = np.arange(total) - np.repeat(offset, deg)
            pos = np.repeat(start, deg) + within
            if fanout >= 0 and (deg > fanout).any():
                order = np.lexsort((rng.random(total), group))  # random order inside each node's list
                keep = within < fanout  # ``within`` is also the rank after the per-group shuffle
                pos = pos[order][keep]
            nbrs = self.col[pos]
            new = np.unique(nbrs[~seen[nbrs]])
            seen[new] = True
            parts.append(new)
            frontier = new
        return np.sort(np.concatenate(parts))

    def subgraph(self, data: HeteroData, nodes: np.ndarray) -> HeteroData:
        """The sub-``HeteroData`` induced by the sorted region positions ``nodes`` (same schema)."""
        subset = {REGION: torch.from_numpy(nodes)}
        if self.image_region is not None:
            member = np.zeros(self.n + 1, dtype=bool)
            member[nodes] = True
            subset[IMAGE] = torch.from_numpy(np.flatnonzero(member[self.image_region]))
        sub = data.subgraph(subset)
        ids = getattr(data, "region_ids", None)
        if ids is not None:
            sub.region_ids = [ids[i] for i in nodes.tolist()]
        return sub


def _batches(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    perm = rng.permutation(n)
    return [perm[i:i + batch_size] for i in range(0, n, batch_size)]


def train_minibatch(data: HeteroData, model_config: ModelConfig | None = None,
                    train_config: TrainConfig | None = None,
                    minibatch_config: MiniBatchConfig | None = None) -> TrainResult:
    """Train a :class:`RegionModel` on neighbour-sampled mini-batches and embed every region.

    Uses ``epochs``, ``lr``, ``weight_decay``, ``seed``, ``device``, ``amp``, ``grad_clip``,
    ``log_every`` and ``num_threads`` of ``train_config`` (no checkpoints, no early stopping:
    use :func:`urbanrep.train.train` for those). ``history`` has one row per epoch (mean loss
    over its batches).

    Raises:
        UrbanRepError: the loss becomes NaN/inf (names the epoch and batch).
    """
    mc = model_config or ModelConfig()
    tc = train_config or TrainConfig()
    bc = minibatch_config or MiniBatchConfig()
    validate_graph(data)
    t0 = time.perf_counter()
    device = resolve_device(tc.device)
    with _num_threads(tc.num_threads):
        torch.manual_seed(tc.seed)
        rng = np.random.default_rng(tc.seed)
        gen = torch.Generator(device=device)
        gen.manual_seed(tc.seed)
        model = RegionModel(mc, GraphMetadata.from_data(data)).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        sampler = RegionSampler(data, bc.num_neighbors)
        n = sampler.n
        history: list[dict[str, float]] = []
        for epoch in range(1, tc.epochs + 1):
            model.train()
            sums: dict[str, float] = {}
            batches = _batches(n, bc.batch_size, rng)
            for b, seeds in enumerate(batches):
                sub = sampler.subgraph(data, sampler.sample(seeds, rng)).to(device)
                total, parts = optimisation_step(model, sub, opt, gen, tc, device, f"epoch {epoch}, batch {b}")
                for k, v in {"total": total.detach(), **parts}.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
            row = {"epoch": float(epoch), **{k: v / len(batches) for k, v in sums.items()}}
            history.append(row)
            if tc.log_every and epoch % tc.log_every == 0:
                log.info("epoch %d: loss %.4f (%d batches)", epoch, row["total"], len(batches))
        emb, weights = embed_minibatch(model, data, bc, device, tc.amp, rng)
    result = TrainResult(model=model, embeddings=emb, fusion_weights=weights, modalities=model.modalities,
                         region_ids=list(getattr(data, "region_ids", range(n))), history=history,
                         epochs_run=tc.epochs, wall_time_s=time.perf_counter() - t0)
    log.info("mini-batch trained %d epochs in %.1f s on %s", tc.epochs, result.wall_time_s, device)
    return result


@torch.no_grad()
def embed_minibatch(model: RegionModel, data: HeteroData, config: MiniBatchConfig | None = None,
                    device: torch.device | None = None, amp: bool = False,
                    rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings ``[N, C]`` and fusion weights ``[N, M]`` (float32) of every region of ``data``."""
    bc = config or MiniBatchConfig()
    device = device or next(model.parameters()).device
    model.eval()
    if bc.inference == "full":
        g = data if device.type == "cpu" else data.clone().to(device)
        with _amp_context(device, amp):
            out = model(g)
        return (out.embedding.float().cpu().numpy().astype(np.float32),
                out.fusion_weights.float().cpu().numpy().astype(np.float32))
    rng = rng or np.random.default_rng(0)
    sampler = RegionSampler(data, bc.num_neighbors)
    emb = np.zeros((sampler.n, model.out_channels), np.float32)
    weights = np.zeros((sampler.n, len(model.modalities)), np.float32)
    for s in range(0, sampler.n, bc.inference_batch_size):
        seeds = np.arange(s, min(s + bc.inference_batch_size, sampler.n))
        nodes = sampler.sample(seeds, rng)
        with _amp_context(device, amp):
            out = model(sampler.subgraph(data, nodes).to(device))
        rows = np.searchsorted(nodes, seeds)
        emb[seeds] = out.embedding.float().cpu().numpy()[rows]
        weights[seeds] = out.fusion_weights.float().cpu().numpy()[rows]
    return emb, weights


def epochs_for_steps(num_regions: int, batch_size: int, steps: int) -> int:
    """Epochs giving about ``steps`` optimiser steps (helper for benchmarks)."""
    return max(1, math.ceil(steps / max(1, math.ceil(num_regions / batch_size))))
