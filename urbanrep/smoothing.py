"""Neighbourhood smoothing of a finished embedding over the region adjacency graph.

The training objectives (contrast between modalities, input retention) reward an embedding that
tells every region apart from the others, down to the noise of its own counts; what the analyst
asks of it (crime, check-ins, emissions, districts) varies smoothly over space. Mixing each
region's embedding with the mean of its adjacent regions' (one step of a low-pass graph filter,
as in APPNP's propagation or SGC's feature smoothing) keeps the region's own signal and damps the
part no neighbour shares. It uses the graph's adjacency only, never a target.

The right spatial scale depends on the question (population varies over whole districts, crime
over a few blocks), so :func:`neighbourhood_scales` can also append the neighbour means over one,
two, ... hops side by side; a downstream probe then weighs each scale per task.

Shapes: ``emb`` ``[N, C]``; ``edge_index`` ``[2, E]`` (region graph node indices).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def undirected_adjacency(edge_index: np.ndarray, num_nodes: int) -> sp.csr_matrix:
    """0/1 adjacency ``A`` ``[N, N]`` of an undirected region graph.

    Edges count in both directions whatever way they are stored; duplicates and self loops
    are dropped.

    Args:
        edge_index: ``[2, E]`` integer node pairs.
        num_nodes: ``N``.
    """
    src, dst = np.asarray(edge_index[0], np.int64), np.asarray(edge_index[1], np.int64)
    keep = src != dst
    rows = np.concatenate([dst[keep], src[keep]])
    cols = np.concatenate([src[keep], dst[keep]])
    a = sp.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(num_nodes, num_nodes))
    a.data[:] = 1.0  # summed duplicates -> one edge
    return a


def neighbour_mean_operator(edge_index: np.ndarray, num_nodes: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """Row-normalised adjacency of an undirected region graph.

    Edges count as in :func:`undirected_adjacency`.

    Args:
        edge_index: ``[2, E]`` integer node pairs.
        num_nodes: ``N``.

    Returns:
        ``(P, degree)``: ``P`` ``[N, N]`` with ``(P @ x)[i]`` the mean of ``x`` over the
        neighbours of ``i`` (a zero row for a region without neighbours), and ``degree`` ``[N]``.
    """
    a = undirected_adjacency(edge_index, num_nodes)
    degree = np.diff(a.indptr).astype(np.float64)
    p = sp.diags(1.0 / np.maximum(degree, 1.0)) @ a
    return sp.csr_matrix(p), degree


def hop_operator(edge_index: np.ndarray, num_nodes: int) -> sp.csr_matrix:
    """``P``: the neighbour mean of :func:`neighbour_mean_operator`, a region without neighbours
    keeping its own row. Build it once per graph and hand it to the functions below."""
    p, degree = neighbour_mean_operator(edge_index, num_nodes)
    return sp.csr_matrix(p + sp.diags((degree == 0).astype(np.float64)))


def smooth_over_neighbours(emb: np.ndarray, hop: sp.csr_matrix, share: float) -> np.ndarray:
    """``(1 - share) * emb + share * mean(emb over adjacent regions)``, row by row.

    A region without neighbours keeps its own row.

    Args:
        emb: ``[N, C]`` embedding, rows in graph node order.
        hop: ``[N, N]`` :func:`hop_operator` of the graph's adjacency edges.
        share: Weight of the neighbour mean, in ``[0, 1)``; 0 returns ``emb`` unchanged.

    Returns:
        ``[N, C]`` float32.
    """
    if share == 0.0:
        return emb
    x = emb.astype(np.float64)
    mixed = (1.0 - share) * x + share * (hop @ x)
    return np.asarray(mixed, dtype=np.float32)


def neighbourhood_scales(emb: np.ndarray, hop: sp.csr_matrix, scales: int) -> np.ndarray:
    """``emb`` with its neighbour means over 1..``scales`` hops appended: ``[emb, P emb, P² emb, ...]``.

    Args:
        emb: ``[N, C]`` embedding, rows in graph node order.
        hop: ``[N, N]`` :func:`hop_operator` (``P``) of the graph's adjacency edges.
        scales: Hops to append (0 returns ``emb`` unchanged).

    Returns:
        ``[N, (1 + scales) * C]`` float32.
    """
    if scales == 0:
        return emb
    n, c = emb.shape
    out = np.empty((n, (1 + scales) * c), np.float32)  # filled block by block: no float64 copy of the whole
    out[:, :c] = emb
    x = emb.astype(np.float64)
    for k in range(1, scales + 1):
        x = hop @ x
        out[:, k * c:(k + 1) * c] = x
    return out


def neighbourhood_transform(emb: np.ndarray, edge_index: np.ndarray, share: float, scales: int) -> np.ndarray:
    """The neighbourhood part of the written-embedding transform: :func:`smooth_over_neighbours`, then
    :func:`neighbourhood_scales`.

    The first part of what :meth:`urbanrep.network.RegionModel.final_embedding` applies after
    training (``ModelConfig.output_smoothing`` and ``output_scales``; the positional columns follow:
    :func:`urbanrep.written.written_transform` is the whole transform).

    Args:
        emb: ``[N, C]`` embedding as trained, rows in graph node order.
        edge_index: ``[2, E]`` adjacency edges of the region graph.
        share: Smoothing share (0: none).
        scales: Hops of neighbour means to append (0: none).

    Returns:
        ``[N, (1 + scales) * C]`` float32 (``emb`` itself when both are 0).
    """
    if share == 0.0 and scales == 0:
        return emb
    hop = hop_operator(edge_index, emb.shape[0])
    return neighbourhood_scales(smooth_over_neighbours(emb, hop, share), hop, scales)
