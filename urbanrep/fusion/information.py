"""How much spatial structure each modality's input carries: a target-free prior for fusion.

Region attributes that describe a city (what is sold, built, travelled, seen) are spatially
structured: a region resembles its neighbours. Features that carry nothing about the city —
sensor noise, image features of the wrong kind, a mis-joined table — are not. The *spatial
coherence* of a modality is the mean, over its standardised feature columns, of the correlation
between a region's value and the mean of its neighbours' values (a Moran's-I-like statistic on
the region adjacency), computed over regions that have the modality. It uses only the inputs,
never a target, so it can steer the model on any city:

* the fusion adds ``log`` of :func:`noise_prior` to its learned scores
  (:class:`~urbanrep.fusion.spatial.SpatialFusion`), so a modality whose input is noise gets a
  weight near 0 while structured modalities keep their learned, region-specific weights;
* the input-retention loss weights each modality's reconstruction by the same prior, so the
  fused embedding does not spend its width on reproducing noise, and the aggregated-level
  contrast weights each modality pair by the product of their priors (aligning a modality
  with noise teaches it nothing).

A pure-noise modality scores about 0 (``± 1 / sqrt(regions x columns)``); the real modalities of
the benchmark cities score 0.2-0.8.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.data import HeteroData
from torch_geometric.utils import scatter

from urbanrep.experts.base import masked_standardize, signed_log1p
from urbanrep.graphs.cache import graph_constant
from urbanrep.graphs.schema import ADJACENT, IMAGE, IMAGE_IN_REGION, REGION, feature_key, mask_key

#: Coherence given to a modality that cannot be measured (fewer than :data:`MIN_ROWS` regions
#: with data and a neighbour with data, or no varying column): neutral, like a typical modality.
UNMEASURED = 0.5
MIN_ROWS = 8


def spatial_coherence(x: Tensor, mask: Tensor, edge_index: Tensor, log_inputs: bool = True) -> Tensor:
    """Mean neighbour correlation of the standardised columns of ``x`` (target-free).

    Args:
        x: ``[N, F]`` features of one modality (rows of masked regions are ignored).
        mask: ``[N]`` bool, regions with data.
        edge_index: ``[2, E]`` region adjacency (symmetric).
        log_inputs: Compress with :func:`signed_log1p` first (count-like inputs).

    Returns:
        Scalar in ``[0, 1]``: the mean over varying columns of ``corr(x_i, mean_{j ~ i} x_j)``
        over regions with data that have a neighbour with data, clamped at 0;
        :data:`UNMEASURED` when too few regions or no varying column.
    """
    return coherence_and_significance(x, mask, edge_index, log_inputs)[0]


def masked_neighbour_mean(x: Tensor, mask: Tensor, src: Tensor, dst: Tensor) -> tuple[Tensor, Tensor]:
    """Mean of ``x`` over the edges' sources that hold data, at each edge's destination.

    The one neighbour mean of the fusion's inputs: the noise prior's neighbour correlation
    (:func:`coherence_and_significance`) and neighbourhood retention
    (:func:`urbanrep.fusion.losses.neighbour_mean`) both call it with the edges they keep.

    Args:
        x: ``[N, F]`` per-region values.
        mask: ``[N]`` bool, regions whose row of ``x`` is data; edges from other regions are skipped.
        src: ``[E]`` edge sources.
        dst: ``[E]`` edge destinations (each edge counts once, as given).

    Returns:
        ``(mean [N, F], count [N])``: ``count`` is the number of edges with data that reach each
        region (a region with none has a mean of 0).
    """
    keep = mask[src]
    src, dst = src[keep], dst[keep]
    n = x.size(0)
    count = scatter(torch.ones_like(src, dtype=x.dtype), dst, 0, dim_size=n, reduce="sum")
    total = scatter(x[src], dst, 0, dim_size=n, reduce="sum")
    return total / count.clamp_min(1.0).unsqueeze(-1), count


def coherence_and_significance(x: Tensor, mask: Tensor, edge_index: Tensor, log_inputs: bool = True
                               ) -> tuple[Tensor, Tensor]:
    """:func:`spatial_coherence` and its significance against pure noise.

    Under noise each column's neighbour correlation has a standard deviation of about
    ``1 / sqrt(R)`` over ``R`` regions, so the mean over ``F`` varying columns about
    ``1 / sqrt(R F)``; the significance is ``coherence * sqrt(R F)`` (a z-score; ``inf`` when
    unmeasured, so that an unmeasured modality is never treated as noise).

    Returns:
        ``(coherence, z)``, two scalars.
    """
    with torch.no_grad():
        xf = x.float()
        xs = masked_standardize(signed_log1p(xf) if log_inputs else xf, mask)
        src, dst = edge_index[0], edge_index[1]
        keep = mask[dst] & (src != dst)
        nb, deg = masked_neighbour_mean(xs, mask, src[keep], dst[keep])
        rows = mask & (deg > 0)
        inf = xs.new_tensor(float("inf"))
        if int(rows.sum()) < MIN_ROWS:
            return xs.new_tensor(UNMEASURED), inf
        a, b = xs[rows], nb[rows]
        a = a - a.mean(0)
        b = b - b.mean(0)
        sa, sb = a.pow(2).sum(0).sqrt(), b.pow(2).sum(0).sqrt()
        varying = (sa > 1e-6) & (sb > 1e-6)
        if not bool(varying.any()):
            return xs.new_tensor(UNMEASURED), inf
        corr = (a * b).sum(0)[varying] / (sa[varying] * sb[varying])
        coherence = corr.mean().clamp(0.0, 1.0)
        return coherence, coherence * float(int(rows.sum()) * int(varying.sum())) ** 0.5


def region_inputs(data: HeteroData, modality: str) -> tuple[Tensor, Tensor]:
    """``(x [N, F], mask [N])``: a modality's per-region input (street view: mean image features)."""
    reg = data[REGION]
    if modality != "street_view":
        return reg[feature_key(modality)], reg[mask_key(modality)]
    n = int(reg.num_nodes)
    img = data[IMAGE].x.float()
    src, dst = data[IMAGE_IN_REGION].edge_index
    count = scatter(torch.ones_like(src, dtype=img.dtype), dst, 0, dim_size=n, reduce="sum")
    pooled = scatter(img[src], dst, 0, dim_size=n, reduce="sum") / count.clamp_min(1.0).unsqueeze(-1)
    return pooled, count > 0


def modality_coherence(data: HeteroData, modalities: tuple[str, ...], log_inputs: bool = True
                       ) -> tuple[Tensor, Tensor]:
    """``([M] coherence, [M] significance)`` of each modality of ``data`` (see
    :func:`coherence_and_significance`)."""
    edge_index = data[ADJACENT].edge_index
    coh, sig = [], []
    for m in modalities:
        x, mask = region_inputs(data, m)
        c, z = coherence_and_significance(x, mask, edge_index, log_inputs and m != "street_view")
        coh.append(c)
        sig.append(z)
    dev = data[REGION].pos.device
    return torch.stack(coh).to(dev), torch.stack(sig).to(dev)


#: Coherence below which a modality is treated as increasingly noise-like by :func:`noise_prior`
#: (declared before any run, not fitted; the real modalities of every bundled city score >= 0.05
#: and almost all >= 0.25, a noise modality about 0).
NOISE_THRESHOLD = 0.1
#: Significance (z-score against pure noise) below which a modality is excluded: its prior is
#: :data:`EXCLUDED` (the bundled cities' modalities score z >= 5, noise about 0 +- 1).
MIN_SIGNIFICANCE = 3.0
EXCLUDED = 1e-6


def noise_prior(coherence: Tensor, significance: Tensor | None = None, threshold: float = NOISE_THRESHOLD,
                floor: float = 0.01) -> Tensor:
    """``[M]`` weights in ``(0, 1]``: 1 for spatially structured modalities, less for noise-like ones.

    ``clamp(coherence / threshold, floor, 1)``, and :data:`EXCLUDED` for a modality whose
    coherence is not significant (``significance < MIN_SIGNIFICANCE``): such a modality's input
    is indistinguishable from noise, and a noise input is a perfect region identifier that the
    input-retention objective would otherwise use as free capacity to memorise regions. When
    every modality would be excluded, none is (there is nothing to prefer).
    """
    prior = (coherence / threshold).clamp(floor, 1.0)
    if significance is not None:
        noise = significance < MIN_SIGNIFICANCE
        if not bool(noise.all()):
            prior = torch.where(noise, torch.full_like(prior, EXCLUDED), prior)
    return prior


def graph_noise_prior(data: HeteroData, modalities: tuple[str, ...], log_inputs: bool = True) -> Tensor:
    """``[M]`` :func:`noise_prior` of the modalities' :func:`modality_coherence` on ``data``.

    A graph constant: computed once per graph (the adjacency and the modalities' inputs) and
    reused while those tensors are unchanged (:func:`urbanrep.graphs.cache.graph_constant`).
    """
    tensors: list[Tensor | None] = [data[ADJACENT].edge_index]
    for m in modalities:
        if m == "street_view":
            tensors += [data[IMAGE].x, data[IMAGE_IN_REGION].edge_index]
        else:
            tensors += list(region_inputs(data, m))
    return graph_constant("noise_prior", tuple(tensors),
                          lambda: noise_prior(*modality_coherence(data, modalities, log_inputs)),
                          extra=(modalities, log_inputs, int(data[REGION].num_nodes)))
