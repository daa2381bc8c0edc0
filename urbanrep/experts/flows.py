"""Where a region's trips go: its flow profile and the profile's leading principal components.

A region's flow profile is the share of its outgoing trips that goes to each region beside the
share of its incoming trips that comes from each (``[N, 2N]``); clustering those rows is what
groups regions by their trips. Its leading principal components are the mobility expert's
flow-profile inputs (:func:`urbanrep.experts.mobility.city_flow_profile`) and the flow-profile
retention target of the training loss (:class:`urbanrep.fusion.losses.LossConfig`,
``flow_components``); a pure function of the OD edges, so both share one computation per graph.

Shapes: ``edge_index`` ``[2, E]`` origin -> destination; ``weight`` ``[E]`` trips.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Above this many regions the flow-profile components come from a seeded randomised SVD.
EXACT_SVD_MAX_NODES = 1024


def _flow_profiles(edge_index: Tensor, weight: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Entries of the ``[N, 2N]`` flow-profile matrix: out-shares beside transposed in-shares.

    Returns:
        ``(index [2, 2E], value [2E])``: row ``o`` column ``d`` holds ``o``'s share of trips
        going to ``d``; row ``d`` column ``N + o`` holds ``d``'s share of visitors from ``o``.
    """
    w = weight.float().clamp_min(0.0)
    o, d = edge_index[0], edge_index[1]
    out_tot = torch.zeros(n, device=w.device).index_add_(0, o, w)
    in_tot = torch.zeros(n, device=w.device).index_add_(0, d, w)
    index = torch.cat([torch.stack([o, d]), torch.stack([d, n + o])], 1)
    value = torch.cat([w / out_tot[o].clamp_min(1e-12), w / in_tot[d].clamp_min(1e-12)])
    return index, value


def _top_components(index: Tensor, value: Tensor, shape: tuple[int, int], k: int, seed: int = 0,
                    oversample: int = 10, power_iters: int = 4) -> Tensor:
    """``[N, k]`` scores ``U_k S_k`` of the column-centred matrix given by its entries.

    Exact (dense SVD in float64) up to :data:`EXACT_SVD_MAX_NODES` rows; above, a randomised
    SVD (seeded Gaussian range finder with power iterations) on the sparse matrix, centring
    applied implicitly, so memory stays ``O(E + N k)``.
    """
    n = shape[0]
    if n <= EXACT_SVD_MAX_NODES:
        x = torch.zeros(shape, dtype=torch.float64, device=value.device)
        x.index_put_((index[0], index[1]), value.double(), accumulate=True)
        x = x - x.mean(0)
        u, s, _ = torch.linalg.svd(x, full_matrices=False)
        return (u[:, :k] * s[:k]).float()
    sp = torch.sparse_coo_tensor(index, value, shape).coalesce()
    sp_t = sp.t().coalesce()
    mean = torch.sparse.sum(sp, 0).to_dense() / n  # [2N] column means

    def mul(b: Tensor) -> Tensor:  # (X - 1 mean^T) @ b
        return torch.sparse.mm(sp, b) - mean @ b

    def mul_t(b: Tensor) -> Tensor:  # (X - 1 mean^T)^T @ b
        return torch.sparse.mm(sp_t, b) - mean.unsqueeze(1) * b.sum(0, keepdim=True)

    gen = torch.Generator(device="cpu").manual_seed(seed)
    q = min(k + oversample, n)
    y = torch.linalg.qr(mul(torch.randn(shape[1], q, generator=gen).to(value.device))).Q
    for _ in range(power_iters):
        y = torch.linalg.qr(mul(mul_t(y))).Q
    u_small, s, _ = torch.linalg.svd(mul_t(y).t(), full_matrices=False)
    return ((y @ u_small)[:, :k] * s[:k]).float()


def flow_profile_components(edge_index: Tensor, weight: Tensor, num_nodes: int, k: int) -> Tensor:
    """Leading principal components of each region's flow profile, a target for input retention.

    Each region's profile is where its trips go (shares of its outflow) beside where its
    visitors come from (shares of its inflow); the components are the ``k`` leading principal
    component scores of those ``2N``-wide rows, scaled to unit mean square, so that a linear
    decoding of the embedding reproducing them keeps what clustering raw flow rows finds.
    Deterministic (exact SVD up to :data:`EXACT_SVD_MAX_NODES` regions, seeded randomised SVD
    above).

    Args:
        edge_index: ``[2, E]`` origin -> destination.
        weight: ``[E]`` trip counts.
        num_nodes: ``N``.
        k: Components wanted (zero-padded when the graph has fewer).

    Returns:
        ``[N, k]`` float32; rows of regions without trips hold their (centred) score.
    """
    index, value = _flow_profiles(edge_index, weight, num_nodes)
    kk = min(k, num_nodes - 1)
    if kk > 0:
        scores = _top_components(index, value, (num_nodes, 2 * num_nodes), kk)
        scores = scores / scores.pow(2).mean().sqrt().clamp_min(1e-12)
    else:
        scores = value.new_zeros(num_nodes, 0)
    if scores.size(1) < k:
        scores = torch.cat([scores, scores.new_zeros(num_nodes, k - scores.size(1))], 1)
    return scores
