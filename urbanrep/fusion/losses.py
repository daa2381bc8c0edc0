"""Contrastive and reconstruction objectives, and the graph augmentations they use.

All losses are pure functions of tensors; :class:`urbanrep.network.RegionModel` owns the
projection heads and combines the parts according to :class:`LossConfig`. A weight of 0
switches a part off (it is not computed at all).
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import HeteroData

from urbanrep.errors import ConfigError
from urbanrep.graphs.schema import (
    AGGREGATED_MODALITIES,
    IMAGE,
    IMAGE_IN_REGION,
    REGION,
    feature_key,
    mask_key,
)

FUSION_CONTRASTS = ("views", "modality", "cross")
FEATURE_TARGETS = ("log", "both")


@dataclass(frozen=True)
class LossConfig:
    """Weights and settings of the training objective.

    Attributes:
        temperature: InfoNCE temperature of every contrastive term. Default 0.5, chosen on the
            development cities only (``experiments/DESIGN_SELECTION_2026-12-06f.md``):
            0.495 against 0.489 at 0.2 (the earlier default) and 0.487 at 0.1. A softer
            contrast asks less of each region's identity and more of what modalities share.
            It matters only where a city has two or more modalities (or street-view images).
        aggregated_weight: Aggregated level: InfoNCE between every pair of modality embeddings
            of the same region (other regions are negatives; only regions with both).
        point_weight: Point level: InfoNCE between two augmented views of the street-view
            image graph (image nodes).
        fusion_weight: Fusion level, see ``fusion_contrast``. Off (0) by default: on the
            development cities no fusion-level contrast, with three ensemble members, scored
            best (``experiments/DESIGN_SELECTION_2026-12-06a.md`` and ``_2026-12-06b.md``); ``--set model.loss.fusion_weight=1``
            switches the ``"cross"`` contrast on.
        fusion_contrast: ``"cross"`` (default form; of the forms tried with one member it
            scored best on the development cities, ``experiments/select_design.py``) or
            ``"views"``: fused embeddings of two augmented region graphs (GRACE-style; the
            earlier default);
            ``"modality"``: fused embedding vs each modality embedding; ``"cross"``: for each
            modality, the fusion of the *other* modalities (the region's fusion weights
            renormalised without it) vs that modality's embedding — the gate is rewarded for
            weighting what predicts the other modalities, not for making regions identifiable
            (a high-dimensional noise input identifies regions perfectly in ``"views"``).
            Cities with one modality fall back to ``"views"``.
        mobility_weight: KL between the model's OD distribution ``softmax(z_o W_s (z_d W_d)^T)``
            and the observed row-normalised OD (and the column-normalised one, inflows).
        poi_similarity_weight: MSE between embedding cosine similarity and POI-feature
            cosine similarity.
        landuse_similarity_weight: The same for land-use features.
        feature_weight: Input retention: MSE between a linear decoding of the fused embedding
            and each aggregated modality's own standardised input features (regions with data
            only). Contrastive terms alone pull every modality towards what they share (mostly
            mobility) and let modality-specific content (POI mixes, land use) fade; this term
            keeps it linearly readable from the embedding. The default 5 puts this unit-variance
            MSE on the scale of the InfoNCE terms (about log N for a few hundred regions).
        feature_target: What the input-retention loss reconstructs. ``"log"``: each modality's
            features after :func:`~urbanrep.experts.base.signed_log1p` (compressed counts);
            ``"both"``: those, plus the same columns on a linear scale (``log1p:`` count
            columns turned back into counts), so volumes stay linearly readable too. The
            default ``"both"`` was chosen on development cities only (Chicago-77, Singapore;
            ``experiments/select_design.py``), never on the held-out NYC benchmarks.
        flow_components: Input retention of mobility also reconstructs this many leading
            principal components of each region's flow profile (its outgoing trips as shares
            of its outflow and its incoming trips as shares of its inflow, ``2N`` columns;
            :func:`~urbanrep.experts.flows.flow_profile_components`). The OD structure lives in the graph's edges, not
            in the mobility feature columns (flow totals), so without this term the embedding
            keeps the volumes but may lose where the trips go. 0 switches it off. Applies when
            the model has other modalities beside mobility; on the development city with
            mobility, POI and land use (Chicago-77) 8 and 32 components cost strict R², so the
            default is 0.
        solo_flow_components: The same, for a model whose only modality is mobility. 0 (off)
            since design round 2026-12-07ae: with the flow-profile inputs of the mobility expert
            (``ExpertConfig.flow_inputs``), retaining 16 components as well cost the two
            development graphs with mobility alone (fresh seeds: Chicago-77 0.319 against 0.364
            without, São Paulo 0.322 against 0.319; experiments/DESIGN_SELECTION.md). It was 16
            from an early round, when the expert had no flow inputs and 16 components raised
            Chicago-77's mobility-alone strict R² from 0.293 to 0.426.
        structure_weight: Input-structure retention: MSE between the cosine similarities of
            the (centred) fused embeddings of two regions and the similarity of their inputs
            (:func:`structure_loss`): the mean, over the modalities both regions hold, of the
            cosine similarity of their standardised input rows, and for mobility also of their
            flow profiles (where trips go and come from, ``flow_structure_components``
            components). The embedding itself, not a head, must keep who resembles whom, so
            distance-based tools (KMeans, nearest neighbours) find the structure the inputs
            have. 0 switches it off.
        flow_structure_components: Width of the flow-profile summary the structure term
            compares (leading principal components of the ``2N``-wide profiles).
        decorrelation_weight: Redundancy reduction of the fused embedding
            (:func:`decorrelation_loss`, the covariance term of VICReg / Barlow Twins computed on
            correlations): the mean squared correlation between two of its columns. The
            contrastive terms reward what the modalities agree on and let the columns repeat it;
            this term asks each column for something the others do not carry, so the width
            holds more distinct information. 0 (default) switches it off.
        region_mask: Masked-region training (GraphMAE-style): in every step each aggregated
            modality is hidden from this share of the regions (:func:`hide_regions`) for the
            forward pass, and the input-retention loss still asks for their features, so the
            embedding must carry what a region's other modalities and its neighbours say about
            it, not only a copy of its own inputs. 0 (default) switches it off.
        context_weight: Neighbourhood retention: MSE between a linear decoding of the fused
            embedding and the mean of the adjacent regions' input-retention targets (over the
            neighbours with data; :func:`neighbour_mean`), per modality. Input retention asks the
            embedding for the region's own inputs; this asks it also for what surrounds the
            region, which the written embedding's neighbourhood scales otherwise add after
            training. In mini-batch training the neighbours are those in the batch. 0 (default)
            switches it off.
        contrast_channels: The region-level contrastive terms (aggregated and fusion levels)
            see only the first this many channels of the embeddings they compare; the other
            channels are left to the non-contrastive terms (input retention, mobility), room for
            what one modality carries and the others do not (a shared / modality-specific split,
            as in factorised multimodal contrastive learning). 0 (default): every channel.
        balance_weight: Load-balancing loss of sparse (top-k) MoE routing.
        feature_drop: Probability of masking a feature column in an augmented view.
        edge_drop: Probability of dropping an edge in an augmented view.
        max_nodes: Largest number of regions (or images) in one dense ``[R, R]`` loss
            term; larger graphs use a seeded random subset per step.
        negative_hops: Region-level contrast (aggregated and fusion levels) without near
            negatives: two regions within this many adjacency hops of each other are not each
            other's negatives (:func:`near_pairs`), on the idea that adjacent regions tend to be
            alike and pushing them apart works against targets that vary smoothly over space.
            0 (default): every other region is a negative. On the development cities one and two
            hops scored 0.526 and 0.523 against 0.530 (round 2026-12-06t,
            ``experiments/DESIGN_SELECTION_2026-12-06t.md``): telling a region from its neighbours helped
            Chicago-77's probes, under spatial-block folds most, more than it cost.
    """

    temperature: float = 0.5
    aggregated_weight: float = 1.0
    point_weight: float = 1.0
    fusion_weight: float = 0.0
    fusion_contrast: str = "cross"
    mobility_weight: float = 1.0
    poi_similarity_weight: float = 0.0
    landuse_similarity_weight: float = 0.0
    feature_weight: float = 5.0
    feature_target: str = "both"
    flow_components: int = 0
    solo_flow_components: int = 0
    structure_weight: float = 0.0
    flow_structure_components: int = 32
    decorrelation_weight: float = 0.0
    balance_weight: float = 0.01
    feature_drop: float = 0.2
    edge_drop: float = 0.2
    max_nodes: int = 2048
    negative_hops: int = 0
    region_mask: float = 0.0
    contrast_channels: int = 0
    context_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ConfigError(f"LossConfig.temperature must be > 0, got {self.temperature}")
        for name in ("aggregated_weight", "point_weight", "fusion_weight", "mobility_weight",
                     "poi_similarity_weight", "landuse_similarity_weight", "feature_weight", "balance_weight",
                     "structure_weight", "decorrelation_weight", "context_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"LossConfig.{name} must be >= 0 (0 switches it off), got {getattr(self, name)}")
        if self.feature_target not in FEATURE_TARGETS:
            raise ConfigError(f"LossConfig.feature_target must be one of {FEATURE_TARGETS}, "
                              f"got {self.feature_target!r}")
        if self.fusion_contrast not in FUSION_CONTRASTS:
            raise ConfigError(f"LossConfig.fusion_contrast must be one of {FUSION_CONTRASTS}, "
                              f"got {self.fusion_contrast!r}")
        for name in ("feature_drop", "edge_drop", "region_mask"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"LossConfig.{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("flow_components", "solo_flow_components", "contrast_channels"):
            if getattr(self, name) < 0:
                raise ConfigError(f"LossConfig.{name} must be >= 0 (0 switches it off), got {getattr(self, name)}")
        if self.flow_structure_components < 1:
            raise ConfigError(f"LossConfig.flow_structure_components must be >= 1, got {self.flow_structure_components}")
        if self.max_nodes < 2:
            raise ConfigError(f"LossConfig.max_nodes must be >= 2, got {self.max_nodes}")
        if self.negative_hops < 0:
            raise ConfigError(f"LossConfig.negative_hops must be >= 0 (0: every other region is a negative), "
                              f"got {self.negative_hops}")


def sample_nodes(num: int, max_nodes: int, generator: torch.Generator | None, device: torch.device) -> Tensor | None:
    """A sorted random subset of ``max_nodes`` indices when ``num > max_nodes``, else None (all)."""
    if num <= max_nodes:
        return None
    perm = torch.randperm(num, generator=generator, device=generator.device if generator else "cpu")
    return perm[:max_nodes].sort().values.to(device)


def info_nce(a: Tensor, b: Tensor, temperature: float, exclude: Tensor | None = None) -> Tensor:
    """Symmetric InfoNCE: row ``i`` of ``a`` and of ``b`` are positives, other rows negatives.

    Args:
        a: ``[K, D]`` anchors.
        b: ``[K, D]`` positives.
        temperature: Softmax temperature.
        exclude: Optional ``[K, K]`` bool, symmetric with a False diagonal: pairs that are not
            each other's negatives (e.g. :func:`near_pairs`).

    Returns:
        Scalar loss (0 when ``K < 2``).
    """
    if a.size(0) < 2:
        return a.sum() * 0.0
    a = F.normalize(a.float(), dim=-1)
    b = F.normalize(b.float(), dim=-1)
    logits = a @ b.t() / temperature
    if exclude is not None:
        logits = logits.masked_fill(exclude, float("-inf"))
    target = torch.arange(a.size(0), device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def near_pairs(edge_index: Tensor, num_nodes: int, index: Tensor, hops: int) -> Tensor:
    """Which of the regions ``index`` lie within ``hops`` adjacency hops of each other.

    The paths may pass through regions outside ``index`` (a sampled subset sees the whole graph's
    distances). Sparse: the cost grows with the edges within ``hops`` of ``index``, not with
    ``num_nodes``.

    Args:
        edge_index: ``[2, E]`` adjacency edges (either direction; the result is symmetric).
        num_nodes: Number of regions in the graph.
        index: ``[K]`` distinct region indices.
        hops: Largest hop distance (>= 1).

    Returns:
        ``[K, K]`` bool, False on the diagonal.
    """
    k = index.numel()
    dev = index.device
    both = torch.cat([edge_index, edge_index.flip(0)], 1).to(dev)
    adj = torch.sparse_coo_tensor(both, torch.ones(both.size(1), device=dev), (num_nodes, num_nodes),
                                  check_invariants=False).coalesce()
    frontier = adj.index_select(0, index).coalesce()  # [K, N]: one hop from each anchor
    reach = frontier
    for _ in range(hops - 1):
        with warnings.catch_warnings():  # torch notes once that sparse CSR support is in beta
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            frontier = torch.sparse.mm(frontier, adj).coalesce()
        reach = (reach + frontier).coalesce()
    rows, cols = reach.indices()
    pos = torch.full((num_nodes,), -1, dtype=torch.long, device=dev)
    pos[index] = torch.arange(k, device=dev)
    keep = pos[cols] >= 0
    near = torch.zeros(k, k, dtype=torch.bool, device=dev)
    near[rows[keep], pos[cols[keep]]] = True
    near |= near.t().clone()
    near.fill_diagonal_(False)
    return near


def dense_od(edge_index: Tensor, weight: Tensor, num_nodes: int, rows: Tensor | None) -> Tensor:
    """OD counts ``[R, R]`` restricted to ``rows`` (all nodes when None)."""
    if rows is None:
        od = weight.new_zeros(num_nodes, num_nodes, dtype=torch.float32)
        return od.index_put_((edge_index[0], edge_index[1]), weight.float(), accumulate=True)
    local = torch.full((num_nodes,), -1, dtype=torch.long, device=edge_index.device)
    local[rows] = torch.arange(rows.numel(), device=edge_index.device)
    o, d = local[edge_index[0]], local[edge_index[1]]
    keep = (o >= 0) & (d >= 0)
    od = weight.new_zeros(rows.numel(), rows.numel(), dtype=torch.float32)
    return od.index_put_((o[keep], d[keep]), weight[keep].float(), accumulate=True)


def _kl_rows(target_counts: Tensor, log_q: Tensor, dim: int) -> Tensor:
    tot = target_counts.sum(dim, keepdim=True)
    valid = tot.squeeze(dim) > 0
    if not valid.any():
        return log_q.sum() * 0.0
    p = target_counts / tot.clamp_min(1e-12)
    kl = (torch.xlogy(p, p) - p * log_q).sum(dim)
    return kl[valid].mean()


def mobility_reconstruction_loss(src: Tensor, dst: Tensor, od: Tensor) -> Tensor:
    """KL between observed and modelled trip distributions, outflows and inflows.

    The model's distribution of trips leaving origin ``o`` is ``softmax_d(src_o . dst_d)``; the
    inflow distribution of destination ``d`` is ``softmax_o`` of the same scores. Origins
    (destinations) without trips are skipped.

    Args:
        src: ``[R, D]`` origin-side embeddings.
        dst: ``[R, D]`` destination-side embeddings.
        od: ``[R, R]`` trip counts.

    Returns:
        ``KL_out + KL_in`` (scalar, >= 0).
    """
    logits = src.float() @ dst.float().t()
    return (_kl_rows(od, torch.log_softmax(logits, 1), 1)
            + _kl_rows(od, torch.log_softmax(logits, 0), 0))


def similarity_reconstruction_loss(emb: Tensor, x: Tensor, mask: Tensor) -> Tensor:
    """MSE between embedding cosine similarity and feature cosine similarity (present rows).

    Args:
        emb: ``[R, D]`` projected embeddings.
        x: ``[R, F]`` features of one modality.
        mask: ``[R]`` bool, rows with data.

    Returns:
        Scalar loss (0 with fewer than two present rows).
    """
    if int(mask.sum()) < 2:
        return emb.sum() * 0.0
    xe = F.normalize(x[mask].float(), dim=-1)
    ze = F.normalize(emb[mask].float(), dim=-1)
    return F.mse_loss(ze @ ze.t(), xe @ xe.t())


def decorrelation_loss(emb: Tensor) -> Tensor:
    """Mean squared off-diagonal correlation between the columns of ``emb``.

    ``C = Z^T Z / (R - 1)`` with ``Z`` the column-standardised rows; the loss is
    ``sum_{i != j} C_ij^2 / (D (D - 1))``, in ``[0, 1]``: 0 when every pair of columns is
    uncorrelated, 1 when all columns are one signal (up to sign). A constant column counts as
    uncorrelated with every other.

    Args:
        emb: ``[R, D]`` embeddings (``R >= 2``, ``D >= 2``).

    Returns:
        Scalar loss (0 for fewer than two rows or columns).
    """
    r, d = emb.shape
    if r < 2 or d < 2:
        return emb.sum() * 0.0
    x = emb.float()
    z = x - x.mean(dim=0)
    z = z / z.pow(2).sum(dim=0).div(r - 1).add(1e-8).sqrt()
    c = z.t() @ z / (r - 1)
    off = c - torch.diag_embed(torch.diagonal(c))
    return off.pow(2).sum() / (d * (d - 1))


def structure_loss(emb: Tensor, views: list[tuple[Tensor, Tensor, Tensor]]) -> Tensor:
    """MSE between the embedding's cosine similarities and the inputs' (input-structure retention).

    The target similarity of regions ``i`` and ``j`` is the weighted mean, over the views both
    hold, of the cosine similarity of their rows in that view; pairs sharing no view are left out.

    Args:
        emb: ``[K, D]`` embeddings (centred over the ``K`` rows here, so that similarity is
            relative to the city's average region).
        views: ``(rows [K, F_v], mask [K] bool, weight [])`` per input view; ``rows`` are the
            view's (standardised) features, ``weight`` its share of the target (e.g. the noise
            prior of its modality).

    Returns:
        Scalar loss (0 when no pair of regions shares a view).
    """
    z = F.normalize(emb.float() - emb.float().mean(0, keepdim=True), dim=-1)
    sim = z @ z.t()
    num = sim.new_zeros(sim.shape)
    den = sim.new_zeros(sim.shape)
    for rows, mask, weight in views:
        m = mask.to(sim.dtype)
        pair = m.unsqueeze(1) * m.unsqueeze(0) * weight.to(sim.dtype)
        x = F.normalize(rows.float(), dim=-1)
        num = num + pair * (x @ x.t())
        den = den + pair
    keep = den > 0
    if not bool(keep.any()):
        return emb.sum() * 0.0
    target = num[keep] / den[keep]
    return F.mse_loss(sim[keep], target)


def feature_reconstruction_loss(pred: Tensor, x: Tensor, mask: Tensor) -> Tensor:
    """Masked MSE between decoded and observed (standardised) features.

    Args:
        pred: ``[N, F]`` features decoded from the embedding.
        x: ``[N, F]`` standardised input features.
        mask: ``[N]`` bool, regions holding data for this modality.

    Returns:
        Scalar mean squared error over the regions with data (0 when there are none).
    """
    if int(mask.sum()) == 0:
        return pred.sum() * 0.0
    return ((pred[mask] - x[mask]) ** 2).mean()


def neighbour_mean(x: Tensor, mask: Tensor, edge_index: Tensor) -> tuple[Tensor, Tensor]:
    """Mean of ``x`` over each region's adjacent regions that hold data (neighbourhood retention).

    Args:
        x: ``[N, F]`` per-region values (e.g. standardised retention targets).
        mask: ``[N]`` bool, regions whose row of ``x`` is data.
        edge_index: ``[2, E]`` region adjacency; either direction counts, duplicates and self
            loops are dropped.

    Returns:
        ``(mean [N, F], has [N] bool)``: ``has`` is False for a region none of whose neighbours
        holds data (its row of ``mean`` is 0).
    """
    from torch_geometric.utils import remove_self_loops, to_undirected

    from urbanrep.fusion.information import masked_neighbour_mean

    src, dst = to_undirected(remove_self_loops(edge_index)[0], num_nodes=x.size(0))
    mean, count = masked_neighbour_mean(x, mask, src, dst)
    return mean, count > 0


def _keep(shape: tuple[int, ...], p: float, generator: torch.Generator | None, device: torch.device) -> Tensor:
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return (torch.rand(shape, generator=generator, device=gen_device) >= p).to(device)


def hide_regions(data: HeteroData, rate: float, generator: torch.Generator | None = None) -> HeteroData:
    """A shallow-copied view in which each aggregated modality is hidden from a random ``rate`` of the regions.

    Masked-region training (``LossConfig.region_mask``, GraphMAE-style): a hidden region's
    features of that modality are zeroed and its mask ``mask_<m>`` is False, as for a region without
    data, independently per modality; the model must then embed it from its other modalities and
    its neighbours. The input graph is not modified.

    Args:
        data: Region graph.
        rate: Share of the regions hidden, per modality.
        generator: Seeded generator (its device is used for sampling).
    """
    view = copy.copy(data)
    reg = view[REGION]
    for m in AGGREGATED_MODALITIES:
        key, mk = feature_key(m), mask_key(m)
        if key not in reg or mk not in reg:
            continue
        x = reg[key]
        keep = _keep((x.size(0),), rate, generator, x.device)
        reg[mk] = reg[mk] & keep
        reg[key] = x * keep.unsqueeze(-1).to(x.dtype)
    return view


def augment_graph(data: HeteroData, feature_drop: float, edge_drop: float,
                  generator: torch.Generator | None = None) -> HeteroData:
    """A shallow-copied view with feature columns masked and edges dropped (GRACE-style).

    Masks (``mask_<m>``) and positions are kept; every region feature matrix and the image
    features lose each column with probability ``feature_drop``; every edge type but image
    membership loses each edge with probability ``edge_drop``. The input graph is not modified.

    Args:
        data: Region graph.
        feature_drop: Column masking probability.
        edge_drop: Edge dropping probability.
        generator: Seeded generator (its device is used for sampling).

    Returns:
        The augmented view.
    """
    view = copy.copy(data)
    reg = view[REGION]
    for m in AGGREGATED_MODALITIES:
        key = feature_key(m)
        if feature_drop > 0 and key in reg:
            x = reg[key]
            reg[key] = x * _keep((x.size(1),), feature_drop, generator, x.device).to(x.dtype)
    if feature_drop > 0 and IMAGE in view.node_types and "x" in view[IMAGE]:
        x = view[IMAGE].x
        view[IMAGE].x = x * _keep((x.size(1),), feature_drop, generator, x.device).to(x.dtype)
    if edge_drop > 0:
        for et in view.edge_types:
            if et == IMAGE_IN_REGION:  # membership is not a relation to perturb
                continue
            store = view[et]
            keep = _keep((store.edge_index.size(1),), edge_drop, generator, store.edge_index.device)
            store.edge_index = store.edge_index[:, keep]
            for attr in ("edge_weight", "edge_attr"):
                if attr in store:
                    store[attr] = store[attr][keep]
    return view
