"""Spatial partitions of a region graph and the partition sampler of mini-batch training.

A neighbour-sampled batch (:class:`urbanrep.minibatch.RegionSampler`) grows its seeds by a few
hops over the union of every region-region edge type; similarity and OD edges are long-range, so
a few hops reach most of the city and each batch is nearly a full-graph step (at 10k regions the
default fan-out made an epoch cost ~10 full-graph epochs). :class:`PartitionSampler` instead cuts
the regions once into compact spatial blocks of about ``partition_size`` regions and, each epoch,
makes every batch the union of a few randomly drawn blocks (ClusterGCN, Chiang et al. 2019: edges
between the blocks of one batch are kept, so over the epochs every edge is seen); every region is
a seed exactly once per epoch, so an epoch processes each region once. An optional halo adds
sampled neighbours of the seeds as context; the losses are then taken on the seed regions only.

The blocks come from recursive coordinate bisection of the region centroids (``pos``): the set is
split across its wider extent into two halves whose sizes keep every final block within one region
of ``ceil(N / parts)``. METIS (``torch_geometric.loader.ClusterData``) would cut fewer of the
long-range edges but needs ``pyg-lib`` or ``torch-sparse`` compiled with METIS; centroids need
nothing and are deterministic. :func:`edge_cut` says how many edges of each type a partition cuts.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch_geometric.data import HeteroData

from urbanrep.graphs.schema import REGION


def spatial_partition(pos: np.ndarray, parts: int) -> np.ndarray:
    """Block id of every region from recursive coordinate bisection of the centroids.

    Args:
        pos: ``[N, 2]`` region centroids (any metric CRS).
        parts: Number of blocks ``P`` (clipped to ``[1, N]``).

    Returns:
        ``[N]`` int64 block ids in ``[0, P)``; block sizes differ by at most one; blocks are
        numbered in the order of the bisection tree (neighbouring ids are neighbouring blocks).
    """
    pos = np.asarray(pos, dtype=np.float64)
    n = len(pos)
    out = np.zeros(n, np.int64)
    parts = max(1, min(int(parts), n))
    stack: list[tuple[np.ndarray, int, int]] = [(np.arange(n), parts, 0)]  # members, blocks, first id
    while stack:
        idx, p, first = stack.pop()
        if p == 1:
            out[idx] = first
            continue
        p_left = p // 2
        n_left = (len(idx) * p_left) // p
        xy = pos[idx]
        axis = int(np.argmax(xy.max(0) - xy.min(0))) if len(idx) else 0
        order = np.lexsort((idx, xy[:, axis]))  # ties broken by region position: deterministic
        stack.append((idx[order[n_left:]], p - p_left, first + p_left))
        stack.append((idx[order[:n_left]], p_left, first))
    return out


def edge_cut(data: HeteroData, part: np.ndarray) -> dict[str, float]:
    """Share of each region-region edge type's edges that join two different blocks.

    Args:
        data: A region graph.
        part: ``[N]`` block id of every region.

    Returns:
        ``{relation: share cut}`` for every ``(region, *, region)`` edge type with edges.
    """
    out = {}
    for et in data.edge_types:
        if et[0] == REGION and et[2] == REGION and data[et].edge_index.size(1):
            ei = data[et].edge_index.cpu().numpy()
            out[et[1]] = float((part[ei[0]] != part[ei[1]]).mean())
    return out


class PartitionSampler:
    """Batches of whole spatial blocks: every region is a seed exactly once per epoch.

    Args:
        data: A region graph (``data["region"].pos`` gives the centroids).
        partition_size: Regions per block, about: a batch is ``q = max(1, round(batch_size /
            partition_size))`` blocks, and the regions are cut into ``q * ceil(N / batch_size)``
            blocks (sizes within one region of each other), so every batch of an epoch holds the
            same number of blocks and about ``min(batch_size, N)`` seeds.
        batch_size: Seed regions per batch. With ``N <= batch_size`` an epoch is one batch, the
            whole graph, and training is full-graph training.
    """

    def __init__(self, data: HeteroData, partition_size: int, batch_size: int) -> None:
        self.n = int(data[REGION].num_nodes)
        self.parts_per_batch = max(1, round(batch_size / partition_size))
        self.num_batches = max(1, math.ceil(self.n / batch_size))
        self.num_parts = max(1, min(self.n, self.parts_per_batch * self.num_batches))
        self.parts_per_batch = min(self.parts_per_batch, self.num_parts)
        pos = data[REGION].pos
        self.part = spatial_partition(pos.cpu().numpy() if isinstance(pos, torch.Tensor) else pos, self.num_parts)
        order = np.argsort(self.part, kind="stable")
        bounds = np.searchsorted(self.part[order], np.arange(self.num_parts + 1))
        self.members = [order[bounds[i]:bounds[i + 1]] for i in range(self.num_parts)]

    def epoch_batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        """One epoch's seed batches (sorted region positions): random unions of blocks.

        The blocks are drawn in the order of ``rng.permutation`` and grouped
        ``parts_per_batch`` at a time; the batches partition ``range(N)``.
        """
        perm = rng.permutation(self.num_parts)
        return [np.sort(np.concatenate([self.members[p] for p in perm[i:i + self.parts_per_batch]]))
                for i in range(0, self.num_parts, self.parts_per_batch)]

    def inference_batches(self, batch_size: int) -> list[np.ndarray]:
        """Blocks in bisection order, grouped into batches of about ``batch_size`` seeds."""
        per = max(1, round(batch_size / max(1, self.n // self.num_parts)))
        return [np.sort(np.concatenate(self.members[i:i + per])) for i in range(0, self.num_parts, per)]
