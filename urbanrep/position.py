"""Where a region sits in its city, as columns of the written embedding.

Many things an analyst asks of a region embedding (population, jobs, crime) vary over the city at
scales larger than a region's neighbourhood, and the modalities a city has may describe that only
weakly: Singapore's raw POIs alone, for example. The low-frequency eigenvectors of the region
adjacency graph's normalised Laplacian (Laplacian eigenmaps; the graph positional encodings of
graph transformers) describe position along the city's own fabric: they follow its rivers, parks
and districts rather than straight-line coordinates. :func:`append_position` appends a few of them
to an embedding, so that a linear probe can weigh "where" beside "what". They use the adjacency
only, never a target.

How many columns: one per ``regions_per_column`` regions, at most :data:`POSITION_MAX`. A city of
77 regions cannot afford as many columns as one of 374 (a probe learns from about 60 of them per
fold).

Shapes: ``emb`` ``[N, C]``; ``edge_index`` ``[2, E]`` (region graph node indices).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from urbanrep.smoothing import undirected_adjacency

#: Most positional columns appended, whatever the number of regions.
POSITION_MAX = 64
#: Up to this many regions the eigenvectors come from a dense symmetric solver; above it from a
#: sparse shift-invert Lanczos solver (scipy ``eigsh``), which stays fast on planar region graphs.
DENSE_MAX = 4000


def position_count(num_nodes: int, regions_per_column: int) -> int:
    """Number of positional columns for a graph of ``num_nodes`` regions (0 when switched off).

    Args:
        num_nodes: ``N``.
        regions_per_column: One column per this many regions; 0 switches the columns off.

    Returns:
        ``min(POSITION_MAX, N // regions_per_column, N - 1)`` (at least 0).
    """
    if regions_per_column <= 0:
        return 0
    return max(0, min(POSITION_MAX, num_nodes // regions_per_column, num_nodes - 1))


def laplacian_position(edge_index: np.ndarray, num_nodes: int, k: int) -> np.ndarray:
    """The ``k`` eigenvectors of the normalised Laplacian with the smallest eigenvalues after the first.

    ``L = I - D^-1/2 A D^-1/2`` of the undirected, unweighted adjacency ``A``
    (:func:`urbanrep.smoothing.undirected_adjacency`; an isolated region counts as degree 1). The first eigenvector (proportional to
    ``sqrt(degree)`` on a connected graph) carries no position and is dropped; on a graph of several
    components the next ones mark the components. Each eigenvector's sign is fixed so that its
    first clearly non-zero entry, in graph order, is positive, so the same graph always gives the
    same columns (up to the basis chosen within a repeated eigenvalue).

    Args:
        edge_index: ``[2, E]`` integer node pairs.
        num_nodes: ``N``.
        k: Columns wanted, ``0 <= k < N``.

    Returns:
        ``[N, k]`` float64, orthonormal columns, lowest frequency first.
    """
    if k <= 0:
        return np.zeros((num_nodes, 0))
    if k >= num_nodes:
        raise ValueError(f"laplacian_position: k={k} needs more than {num_nodes} regions")
    a = undirected_adjacency(edge_index, num_nodes)
    inv_sqrt = sp.diags(1.0 / np.sqrt(np.maximum(np.diff(a.indptr), 1).astype(np.float64)))
    lap = sp.identity(num_nodes, format="csr") - inv_sqrt @ a @ inv_sqrt
    if num_nodes <= DENSE_MAX:
        _, vecs = np.linalg.eigh(lap.toarray())
        vecs = vecs[:, : k + 1]
    else:
        from scipy.sparse.linalg import eigsh

        vals, vecs = eigsh(sp.csc_matrix(lap), k=k + 1, sigma=-1e-3, which="LM")
        vecs = vecs[:, np.argsort(vals)]
    vecs = vecs[:, 1:]
    # sign: the first region (in graph order) with a clearly non-zero entry gets a positive one
    clear = np.abs(vecs) > 1e-6 * np.abs(vecs).max(axis=0)
    first = clear.argmax(axis=0)
    return np.asarray(vecs * np.sign(vecs[first, np.arange(vecs.shape[1])]), dtype=np.float64)


_CHUNK = 64  # columns per float64 block when measuring variances (no float64 copy of the whole)


def column_variances(emb: np.ndarray) -> np.ndarray:
    """Population variance of every column of ``emb``, computed in float64 block by block.

    Args:
        emb: ``[N, C]``.

    Returns:
        ``[C]`` float64.
    """
    out = np.empty(emb.shape[1], np.float64)
    for start in range(0, emb.shape[1], _CHUNK):
        out[start:start + _CHUNK] = emb[:, start:start + _CHUNK].astype(np.float64).var(axis=0)
    return out


def append_position(emb: np.ndarray, edge_index: np.ndarray, regions_per_column: int) -> np.ndarray:
    """``emb`` with :func:`laplacian_position` columns appended, scaled like one of its columns.

    Each positional column is given the root-mean-square column standard deviation of ``emb``, so
    that a probe without standardisation weighs it like an embedding column.

    Args:
        emb: ``[N, C]`` embedding, rows in graph node order.
        edge_index: ``[2, E]`` adjacency edges of the region graph.
        regions_per_column: One column per this many regions (:func:`position_count`); 0 returns
            ``emb`` unchanged.

    Returns:
        ``[N, C + position_count(N, regions_per_column)]`` float32.
    """
    k = position_count(emb.shape[0], regions_per_column)
    if k == 0:
        return emb
    return append_scaled(emb, laplacian_position(edge_index, emb.shape[0], k))


def append_scaled(emb: np.ndarray, extra: np.ndarray) -> np.ndarray:
    """``emb`` with ``extra``'s columns appended, each scaled like one column of ``emb``.

    Each appended column is divided by its standard deviation and given the root-mean-square column
    standard deviation of ``emb``, so that a probe without standardisation weighs it like an
    embedding column. Columns are not centred (centre them first where that matters).

    Args:
        emb: ``[N, C]`` embedding.
        extra: ``[N, K]`` columns to append.

    Returns:
        ``[N, C + K]`` float32 (``emb`` itself when ``K == 0``).
    """
    if extra.shape[1] == 0:
        return emb
    scale = float(np.sqrt(np.mean(column_variances(emb)))) or 1.0
    x = extra / np.maximum(extra.std(axis=0), 1e-12) * scale
    return np.hstack([emb, x]).astype(np.float32)
