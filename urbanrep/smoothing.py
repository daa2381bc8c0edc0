"""Neighbourhood smoothing of a finished embedding over the region adjacency graph.

The training objectives (contrast between modalities, input retention) reward an embedding that
tells every region apart from the others, down to the noise of its own counts; what the analyst
asks of it (crime, check-ins, emissions, districts) varies smoothly over space. Mixing each
region's embedding with the mean of its adjacent regions' (one step of a low-pass graph filter,
as in APPNP's propagation or SGC's feature smoothing) keeps the region's own signal and damps the
part no neighbour shares. It uses the graph's adjacency only, never a target.

The right spatial scale depends on the question (population varies over whole districts, crime
over a few blocks), so :func:`neighbourhood_scales` can also append the neighbour means over one,
two, ... hops side by side; a downstream probe then weighs each scale per task. A city of a few
dozen regions cannot afford a full-width block per hop (a probe learns from about 60 of them per
fold, and a hop mean varies over whole districts, of which such a city has only a handful), so
:func:`compress_scales` can keep each hop block's leading principal components only, one per so
many regions, as :mod:`urbanrep.position` does for the positional columns.

Shapes: ``emb`` ``[N, C]``; ``edge_index`` ``[2, E]`` (region graph node indices).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from urbanrep.component_signs import fixed_signs


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


def scale_width(num_nodes: int, channels: int, regions_per_component: int) -> int:
    """Width of each hop block of the written embedding (:func:`compress_scales`).

    Args:
        num_nodes: ``N``.
        channels: ``C``, the width of the row the hop means are taken of.
        regions_per_component: One principal component per this many regions; 0 keeps every channel.

    Returns:
        ``C`` when ``regions_per_component`` is 0, else ``min(C, N // regions_per_component)``
        (0: the hop blocks are left out).
    """
    if regions_per_component <= 0:
        return channels
    return max(0, min(channels, num_nodes // regions_per_component))


def leading_components(x: np.ndarray, k: int) -> np.ndarray:
    """``[N, k]`` float32 scores of the ``k`` leading principal components of ``x`` ``[N, C]``.

    The columns of ``x`` are centred; each component's sign is fixed by
    :func:`urbanrep.component_signs.fixed_signs` (the same input always gives the same columns,
    up to the basis chosen within a repeated singular value). The scores keep their variance (``u * s``), so the
    compressed block carries the share of the block's variance its leading components hold.
    """
    u, s, _ = np.linalg.svd(x.astype(np.float64) - x.mean(0, dtype=np.float64), full_matrices=False)
    return fixed_signs(u[:, :k] * s[:k]).astype(np.float32)


def compress_scales(scaled: np.ndarray, channels: int, width: int) -> np.ndarray:
    """The row of :func:`neighbourhood_scales`' output kept, each hop block cut to ``width`` leading
    principal components (:func:`leading_components`).

    Args:
        scaled: ``[N, (1 + S) * C]`` output of :func:`neighbourhood_scales`.
        channels: ``C``.
        width: Components kept per hop block (:func:`scale_width`); ``C`` returns ``scaled`` itself.

    Returns:
        ``[N, C + S * width]`` float32 (``scaled`` itself when it has no hop block).
    """
    if width >= channels or scaled.shape[1] == channels:
        return scaled
    row, hops = scaled[:, :channels], scaled[:, channels:]
    if width == 0:
        return row
    blocks = [leading_components(block, width) for block in np.split(hops, hops.shape[1] // channels, axis=1)]
    return np.hstack([row, *blocks]).astype(np.float32, copy=False)


def neighbourhood_transform(emb: np.ndarray, edge_index: np.ndarray, share: float, scales: int,
                            regions_per_component: int = 0) -> np.ndarray:
    """The neighbourhood part of the written-embedding transform: :func:`smooth_over_neighbours`, then
    :func:`neighbourhood_scales`, then :func:`compress_scales`.

    The first part of what :meth:`urbanrep.network.RegionModel.final_embedding` applies after
    training (``ModelConfig.output_smoothing``, ``output_scales`` and ``output_scale_regions``; the
    positional columns follow: :func:`urbanrep.written.written_transform` is the whole transform).

    Args:
        emb: ``[N, C]`` embedding as trained, rows in graph node order.
        edge_index: ``[2, E]`` adjacency edges of the region graph.
        share: Smoothing share (0: none).
        scales: Hops of neighbour means to append (0: none).
        regions_per_component: Each hop block cut to one principal component per this many
            regions, at most ``C`` (:func:`scale_width`; 0: full width).

    Returns:
        ``[N, C + scales * scale_width(N, C, regions_per_component)]`` float32 (``emb`` itself
        when ``share`` and ``scales`` are both 0).
    """
    if share == 0.0 and scales == 0:
        return emb
    n, c = emb.shape
    hop = hop_operator(edge_index, n)
    scaled = neighbourhood_scales(smooth_over_neighbours(emb, hop, share), hop, scales)
    return compress_scales(scaled, c, scale_width(n, c, regions_per_component))
