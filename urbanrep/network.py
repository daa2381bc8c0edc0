"""The full region model: modality experts (mixtures) -> spatially-aware fusion -> losses.

``RegionModel(config, metadata)`` is built from a region graph's metadata (which modalities,
their feature widths) and maps the graph to one embedding per region::

    model = RegionModel(ModelConfig(), GraphMetadata.from_data(data))
    out = model(data)                 # ModelOutput: embedding [N, C], fusion_weights [N, M], ...
    total, parts = model.loss(data, out, generator)
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, cast

import numpy as np
import torch
import torch.utils.checkpoint
from torch import Tensor, nn
from torch_geometric.data import HeteroData

from urbanrep.errors import ConfigError, GraphError
from urbanrep.experts.base import (
    ExpertConfig,
    expert_from_config,
    get_expert,
    masked_standardize,
    num_regions,
    reset_modules,
    signed_log1p,
    standardized_inputs,
)
from urbanrep.experts.mobility import flow_components, flow_target_key
from urbanrep.experts.moe import ModalityMoE, MoEConfig
from urbanrep.experts.shared import GCNStack, SharedExpert, UniformExpert
from urbanrep.experts.street_view import StreetViewExpert
from urbanrep.fusion.information import graph_noise_prior
from urbanrep.fusion.losses import (
    LossConfig,
    augment_graph,
    decorrelation_loss,
    dense_od,
    feature_reconstruction_loss,
    hide_regions,
    info_nce,
    mobility_reconstruction_loss,
    near_pairs,
    neighbour_mean,
    sample_nodes,
    similarity_reconstruction_loss,
    structure_loss,
)
from urbanrep.fusion.spatial import FusionConfig, SpatialFusion
from urbanrep.graphs.cache import graph_constant
from urbanrep.graphs.schema import (
    ADJACENT,
    AGGREGATED_MODALITIES,
    IMAGE,
    MODALITY_EDGE,
    REGION,
    feature_key,
)
from urbanrep.position import position_count
from urbanrep.smoothing import scale_width
from urbanrep.volumes import (
    COUNT_OUTPUTS,
    DEFAULT_VOLUME_SCALES,
    appended_columns,
    appended_names,
    volume_scales_problem,
)
from urbanrep.written import OUTPUT_NORMS, layout_columns, written_from_config, written_layout

ALL_MODALITIES = (*AGGREGATED_MODALITIES, "street_view")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GraphMetadata:
    """What the model needs to know about a graph to be built: modalities and input widths.

    Attributes:
        modalities: Modalities present, canonical order.
        in_channels: ``(modality, feature width)`` pairs (street view: image feature width).
        num_slices: Width of the mobility edges' per-slice counts (0 when absent).
    """

    modalities: tuple[str, ...]
    in_channels: tuple[tuple[str, int], ...]
    num_slices: int = 0

    @classmethod
    def from_data(cls, data: HeteroData) -> GraphMetadata:
        """Read the metadata off a region graph."""
        mods = tuple(m for m in ALL_MODALITIES if m in list(data.modalities))
        dims = []
        for m in mods:
            if m == "street_view":
                dims.append((m, int(data[IMAGE].x.size(1))))
            else:
                dims.append((m, int(data[REGION][feature_key(m)].size(1))))
        et = MODALITY_EDGE["mobility"]
        slices = 0
        if "mobility" in mods and et in data.edge_types and "edge_attr" in data[et]:
            slices = int(data[et].edge_attr.size(1))
        return cls(mods, tuple(dims), slices)

    def channels(self, modality: str) -> int:
        """Input width of ``modality``."""
        return dict(self.in_channels)[modality]

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (for checkpoints)."""
        return {"modalities": list(self.modalities), "in_channels": [list(p) for p in self.in_channels],
                "num_slices": self.num_slices}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GraphMetadata:
        """Inverse of :meth:`to_dict`."""
        return cls(tuple(d["modalities"]), tuple((m, int(c)) for m, c in d["in_channels"]), int(d["num_slices"]))


ENSEMBLE_OUTPUTS = ("concat", "aligned")


def align_members(emb: np.ndarray, members: int, iterations: int = 5) -> np.ndarray:
    """Average ensemble members' embeddings after rotating each onto their consensus.

    Generalised orthogonal Procrustes: each member block is centred; the consensus starts as the
    first member and is then, ``iterations`` times, the mean of every member rotated (orthogonal
    ``C x C``, no scaling) to best match it. Deterministic; the result is centred.

    Args:
        emb: ``[N, members * C]`` concatenated member embeddings.
        members: Number of members.
        iterations: Consensus refinements.

    Returns:
        ``[N, C]`` float32 consensus embedding (``emb`` itself when ``members == 1``).
    """
    if members == 1:
        return emb
    c = emb.shape[1] // members
    blocks = [emb[:, i * c:(i + 1) * c].astype(np.float64) for i in range(members)]
    blocks = [b - b.mean(0, keepdims=True) for b in blocks]
    ref = blocks[0]
    for _ in range(iterations):
        ref = np.mean([rotate_onto(b, ref) for b in blocks], 0)
    return ref.astype(np.float32)


def rotate_onto(block: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """``block`` ``[N, C]`` rotated (orthogonal ``C x C``, no scaling) to best match ``ref`` ``[N, C]``
    (orthogonal Procrustes); :func:`align_members`' step."""
    u, _, vt = np.linalg.svd(block.T @ ref)
    return block @ (u @ vt)


@dataclass(frozen=True)
class ModelConfig:
    """Everything that shapes :class:`RegionModel` (mirrors its constructor).

    Attributes:
        expert: Sizes of every expert; ``expert.out_channels`` is the embedding width.
        moe: Shared experts and routing.
        fusion: Spatially-aware (or global) fusion.
        loss: Objective weights.
        uniform_experts: Ablation: one identical GNN architecture (weighted GCN over the view
            graph) for every aggregated modality instead of the dedicated experts.
        modalities: Use only these modalities (None: every modality the graph has).
        projection_channels: Width of the contrastive projection heads.
        checkpoint_experts: Activation checkpointing of every expert while training: only
            the expert outputs are kept for the backward pass and each expert's forward is
            redone there (same gradients, dropout included; about a third more compute,
            several times less memory on large graphs).
        ensemble: Independent members (each a whole model: experts, fusion, heads, with its
            own initialisation) trained side by side on the sum of their objectives; one
            embedding comes out of them (``ensemble_output``), the fusion weights are their
            mean. Linear probes on a few hundred regions vary a lot between training seeds;
            several members average that out (cost: ``ensemble`` times one member). Default 3,
            chosen on the development cities together with ``loss.fusion_weight=0``
            (``experiments/select_design.py``; NYC held out); ``ensemble=1`` costs about a third.
        ensemble_output: How the members' embeddings become the one embedding a run writes:
            ``"aligned"`` (default): each member's embedding rotated onto the members'
            consensus (generalised orthogonal Procrustes, :func:`align_members`) and averaged,
            ``expert.out_channels`` wide: the directions the members agree on add up, seed
            noise averages out, and a bare linear probe has a third of the columns to fit;
            ``"concat"``: the members side by side (``ensemble * expert.out_channels`` wide).
            Training is the same either way. Chosen on the development cities
            (``experiments/DESIGN_SELECTION_2026-12-06b.md``): strict R² 0.449 against
            0.458 for the concatenation (a tie under the declared 0.01 margin), paper-protocol
            R² 0.224 against 0.003.
        output_smoothing: Share of the neighbour mean in the embedding a run writes: each
            region's row becomes ``(1 - s) * own + s * mean(adjacent regions' rows)`` (after
            ``ensemble_output``; :func:`urbanrep.smoothing.smooth_over_neighbours`). Training is
            the same whatever its value; 0 writes the embedding as trained. Default 0.5, with
            ``output_scales=2``: chosen together on the development cities (round 2026-12-06c,
            ``experiments/DESIGN_SELECTION_2026-12-06c.md``; strict R² 0.682 against 0.448 without either).
        output_scales: After ``output_smoothing``, append the neighbour means of the embedding
            over 1..``output_scales`` hops (:func:`urbanrep.smoothing.neighbourhood_scales`):
            one block per hop (default 2: the region, its neighbours and their neighbours; each
            block as wide as the row, or narrower on a small city: ``output_scale_regions``), and a
            probe can weigh the spatial scale per task. 0 appends nothing.
        output_scale_regions: Cut each hop block of ``output_scales`` to one principal component
            per this many regions (at most the block's full width; :func:`urbanrep.smoothing.compress_scales`),
            as ``output_position`` budgets the positional columns: a hop mean varies over whole
            districts, of which a city of 77 regions has a handful, and a probe that learns from
            about 60 regions per fold overfits 128 such columns. Cities of ``64 * output_scale_regions``
            regions or more (512 at 8) keep the full blocks; 0 keeps them on every city. Training is
            the same whatever its value. Default 8 (Chicago-77: 9 components per hop, 180 regions:
            22), chosen on the development cities in round 2026-12-07z (``experiments/DESIGN_SELECTION_2026-12-07z.md``):
            score 0.557 against 0.537 with full blocks, and on fresh training seeds 0.547 against
            0.533 (Chicago-77 0.602 against 0.555, under spatial-block folds 0.480 against 0.409;
            Singapore 0.646 / 0.627 against 0.628, São Paulo 0.422 / 0.420 against 0.428 / 0.425).
            Models saved before the option read back with 0, as they wrote.
        output_position: Append one positional column per this many regions (at most 64): the
            low-frequency eigenvectors of the region adjacency graph's normalised Laplacian
            (:func:`urbanrep.position.append_position`), so that a probe can weigh where a region
            sits in its city beside what it holds. Training is the same whatever its value; 0
            appends nothing. Default 8 (Chicago-77: 9 columns, 180 regions: 22, 500 or more: 64),
            chosen on the development cities in round 2026-12-06q
            (``experiments/DESIGN_SELECTION_2026-12-06q.md``: score 0.530 against 0.495 without; one column
            per 4 regions was pruned, one per 16 scored 0.507).
        output_norm: The written embedding's overall scale, set last
            (:func:`urbanrep.written.scale_to_total_variance`): ``"unit_variance"`` (default; the
            name from when the total was always 1) scales it to a fixed total variance
            (``output_variance``; the sum of the column variances), so a probe with a fixed penalty
            (a bare ``Ridge(alpha=1)``) regularises alike on every city; ``"none"`` keeps the
            scale as trained (a total variance of about 40-60). Anything that standardises
            columns, measures angles or clusters is unaffected. Chosen on the development cities
            in round 2026-12-06s (``experiments/DESIGN_SELECTION_2026-12-06s.md``): the same strict score
            (0.530), paper-protocol R² 0.475 against 0.418 (São Paulo 0.373 against 0.106;
            Chicago-77 0.613 against 0.650, Singapore 0.438 against 0.498).
        output_variance: The total variance (sum of column variances) ``output_norm="unit_variance"``
            scales the written embedding to. It sets how strongly a probe with a fixed penalty
            (``Ridge(alpha=1)`` on the raw embedding) shrinks: directions that carry less than
            about ``1 / (N * output_variance)`` of the variance are shrunk by more than half.
            Nothing that standardises columns, measures angles or clusters sees it. Default 3,
            chosen on the development cities in round 2026-12-06v (``experiments/DESIGN_SELECTION_2026-12-06v.md``):
            every value ties on the strict score, and the paper protocol decided (mean R² 0.517
            against 0.484 at 1 and 0.514 at 10; Chicago-77 0.709 against 0.642, Singapore 0.478
            against 0.439, São Paulo 0.363 against 0.372). Models saved before the option read
            back with 1, the scale they wrote.
        output_volumes: Append each region's own volume, before the overall scale: for every
            aggregated modality whose features include count columns, the total count on a log
            and on a linear scale (:func:`urbanrep.volumes.region_volumes`), each scaled like one
            embedding column. The smoothing and the neighbour means blur a region's own volume;
            these columns keep it (NYC-180: 6 columns, for POIs, trips and land use). Training is
            the same either way. On by default since round 2026-12-06u
            (``experiments/DESIGN_SELECTION_2026-12-06u.md``): score 0.539 against 0.530, a tie that the
            paper protocol decided (0.484 against 0.475); Chicago-77 0.574 against 0.546,
            Singapore and São Paulo level. Models saved before the option existed read back
            without it.
        volume_scales: The scales each volume is written on, with ``output_volumes``: any of
            ``"log"`` (``log1p`` of the total), ``"sqrt"`` and ``"linear"`` (the total as it is),
            one column each per modality. Default ``("log", "linear")``, the form round 2026-12-06u
            chose. A few regions can hold most of a city's trips or POIs (Midtown Manhattan); on
            the linear scale they are far out in the tail, and a probe that standardises its
            columns then leans on them: on the held-out NYC-180 (measured after the choice, not
            used for it) ``("log",)`` keeps the strict-protocol R² of the embedding without
            volumes where the default loses up to 0.05 (``experiments/DESIGN_SELECTION_2026-12-06u.md``,
            README). The development cities do not tell the scales apart.
        output_counts: Append every count column of the model's aggregated modalities (POIs per
            category, trip totals, road counts ...) after the volumes, on this scale (``"sqrt"``,
            ``"log"`` or ``"linear"``; ``"none"``: not written), each scaled like one embedding
            column (:func:`urbanrep.volumes.region_counts`; a region without a modality's records
            counts zero). The volumes give a modality's total; these give its parts, which the
            experts see only on a log scale and the smoothing blurs. Training is the same either
            way. ``"sqrt"`` (the variance-stabilising scale of counts) by default since round
            2026-12-07aa (``experiments/DESIGN_SELECTION_2026-12-07aa.md``), scored on fresh training seeds 3-5:
            0.553 against 0.547, a tie that the paper protocol decided (0.525 against 0.521);
            Chicago-77 0.625 against 0.593, Singapore 0.615 against 0.627, São Paulo 0.419 against
            0.420; over the eight development graphs (seeds 0-2) 0.487 against 0.480. Models saved
            before the option read back with ``"none"``.
        output_counts_skip: Modalities whose count columns ``output_counts`` leaves out (their
            totals stay in the volumes). Default none since round 2026-12-07ac (``("mobility",)``
            from round 2026-12-07ab, ``experiments/DESIGN_SELECTION_2026-12-07ab.md``, until mobility's
            columns came back as shares, ``output_counts_shares``). ``--set
            'model.output_counts_skip=[mobility]'`` leaves mobility's out (a trained run too, with
            ``urbanrep embed``). Models saved before the option read back with ``()``.
        output_counts_shares: Modalities whose count columns ``output_counts`` writes as the square
            root of each column's share of the region's total for the modality (its composition,
            the Hellinger transform; its size is in the volumes) instead of on ``output_counts``'s
            scale; a region without the modality's records, or with a zero total, is all zeros before
            centring. A modality in ``output_counts_skip`` is left out all the same. Default
            ``("mobility",)`` since round 2026-12-07ac (``experiments/DESIGN_SELECTION.md``):
            mobility's count columns are its trips per direction (out, in, within) and time slice;
            as counts they are the one trip volume written again (round ab left them out), as shares
            they are what the volume is not, when and which way a region's trips go. Fresh training
            seeds 9-11: the three development cities 0.558 against 0.557 (a tie), the two
            mobility-alone graphs 0.324 against 0.289 (Chicago-77's crime task 0.247 against -0.114).
            ``--set 'model.output_counts_shares=[]'`` with ``output_counts_skip=[]`` writes them as
            counts (round aa's form). Models saved before the option read back with ``()``.
    """

    expert: ExpertConfig = field(default_factory=ExpertConfig)
    moe: MoEConfig = field(default_factory=MoEConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    uniform_experts: bool = False
    modalities: tuple[str, ...] | None = None
    projection_channels: int = 64
    checkpoint_experts: bool = False
    ensemble: int = 3
    ensemble_output: str = "aligned"
    output_smoothing: float = 0.5
    output_scales: int = 2
    output_scale_regions: int = 8
    output_position: int = 8
    output_norm: str = "unit_variance"
    output_variance: float = 3.0
    output_volumes: bool = True
    volume_scales: tuple[str, ...] = DEFAULT_VOLUME_SCALES
    output_counts: str = "sqrt"
    output_counts_skip: tuple[str, ...] = ()
    output_counts_shares: tuple[str, ...] = ("mobility",)

    def __post_init__(self) -> None:
        if self.ensemble < 1:
            raise ConfigError(f"ModelConfig.ensemble must be >= 1, got {self.ensemble}")
        if self.ensemble_output not in ENSEMBLE_OUTPUTS:
            raise ConfigError(f"ModelConfig.ensemble_output must be one of {ENSEMBLE_OUTPUTS}, "
                              f"got {self.ensemble_output!r}")
        if self.modalities is not None:
            bad = [m for m in self.modalities if m not in ALL_MODALITIES]
            if bad:
                raise ConfigError(f"ModelConfig.modalities has unknown {bad}; valid: {ALL_MODALITIES}")
        if self.projection_channels < 1:
            raise ConfigError("ModelConfig.projection_channels must be >= 1")
        if self.loss.contrast_channels > self.expert.out_channels:
            raise ConfigError(f"LossConfig.contrast_channels ({self.loss.contrast_channels}) must be at most the "
                              f"embedding width expert.out_channels ({self.expert.out_channels}); 0 means every channel")
        if not 0.0 <= self.output_smoothing < 1.0:
            raise ConfigError(f"ModelConfig.output_smoothing must be in [0, 1) (0 switches it off), "
                              f"got {self.output_smoothing}")
        if self.output_scales < 0:
            raise ConfigError(f"ModelConfig.output_scales must be >= 0 (0 appends nothing), got {self.output_scales}")
        if self.output_scale_regions < 0:
            raise ConfigError(f"ModelConfig.output_scale_regions must be >= 0 regions per principal component "
                              f"(0 keeps the hop blocks at full width), got {self.output_scale_regions}")
        if self.output_position < 0:
            raise ConfigError(f"ModelConfig.output_position must be >= 0 regions per positional column "
                              f"(0 appends nothing), got {self.output_position}")
        if self.output_norm not in OUTPUT_NORMS:
            raise ConfigError(f"ModelConfig.output_norm must be one of {OUTPUT_NORMS}, got {self.output_norm!r}")
        if not (math.isfinite(self.output_variance) and self.output_variance > 0):
            raise ConfigError(f"ModelConfig.output_variance must be a finite number > 0 (the written embedding's "
                              f"total variance, default 3), got {self.output_variance}")
        problem = volume_scales_problem(self.volume_scales)
        if problem:
            raise ConfigError(f"ModelConfig.volume_scales {problem} (e.g. --set 'model.volume_scales=[log]')")
        if self.output_counts not in COUNT_OUTPUTS:
            raise ConfigError(f"ModelConfig.output_counts must be one of {list(COUNT_OUTPUTS)}, got "
                              f"{self.output_counts!r} (e.g. --set model.output_counts=sqrt)")
        for name in ("output_counts_skip", "output_counts_shares"):
            value = getattr(self, name)
            if isinstance(value, str) or any(m not in ALL_MODALITIES for m in value):
                raise ConfigError(f"ModelConfig.{name} must be a list of modalities of {ALL_MODALITIES}, got "
                                  f"{value!r} (e.g. --set 'model.{name}=[mobility]')")


@dataclass
class ModelOutput:
    """What :meth:`RegionModel.forward` returns (also readable like a dict: ``out["embedding"]``).

    Attributes:
        embedding: ``[N, C]`` fused region embedding.
        modality_embeddings: ``{modality: [N, C]}``.
        masks: ``{modality: [N] bool}``, regions with data.
        fusion_weights: ``[N, M]`` fusion weight per modality (columns in :attr:`modalities`).
        aux_loss: Scalar load-balancing loss of the gates (0 for dense routing).
        gates: ``{modality: [N, 1 + k]}`` MoE gate weights.
        modalities: Modality order of the columns of ``fusion_weights``.
        prior: ``[M]`` noise prior of each modality (``fusion.prior="coherence"``), else None.
        members: Each member's own output (``ModelConfig.ensemble > 1``), else None; the
            fields above are then the concatenated embedding, the first member's modality
            embeddings and gates, the mean fusion weights and the summed auxiliary loss.
    """

    embedding: Tensor
    modality_embeddings: dict[str, Tensor]
    masks: dict[str, Tensor]
    fusion_weights: Tensor
    aux_loss: Tensor
    gates: dict[str, Tensor]
    modalities: tuple[str, ...]
    prior: Tensor | None = None
    members: list[ModelOutput] | None = None

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def keys(self) -> list[str]:
        """Field names."""
        return ["embedding", "modality_embeddings", "masks", "fusion_weights", "aux_loss", "gates", "modalities", "prior",
                "members"]


def combine_member_losses(results: list[tuple[Tensor, dict[str, Tensor]]]) -> tuple[Tensor, dict[str, Tensor]]:
    """An ensemble's ``(total, parts)`` from its members' :meth:`RegionModel.loss` results.

    The total is the sum of the members' totals, each part the mean of the members' parts.
    """
    if len(results) == 1:
        return results[0]
    totals = [t for t, _ in results]
    return torch.stack(totals).sum(), {key: torch.stack([p[key] for _, p in results]).mean(0)
                                       for key in results[0][1]}


def graph_flow_components(data: HeteroData, k: int) -> Tensor:
    """``[N, k]`` leading components of the regions' flow profiles (zeros without OD edges).

    A graph constant (:func:`~urbanrep.experts.mobility.flow_components` of the mobility edges),
    computed once per graph and shared by every member, loss term and the mobility expert's
    flow-profile inputs when they ask for it. A graph that :func:`~urbanrep.experts.mobility.with_flow_profile`
    prepared (a mini-batch of a city) carries the whole city's components: those are used, not the
    batch's own (another basis in every batch).
    """
    stored = data[REGION].get(flow_target_key(k))
    if stored is not None:
        return stored
    n = num_regions(data)
    et = MODALITY_EDGE["mobility"]
    if et not in data.edge_types:
        return data[REGION].pos.new_zeros(n, k)
    return flow_components(data[et].edge_index, getattr(data[et], "edge_weight", None), n, k)


def mobility_only(modalities: Sequence[str]) -> bool:
    """Whether a model of ``modalities`` has mobility as its only modality: the models with settings of
    their own (``LossConfig.solo_flow_components``, ``TrainConfig.mobility_only_lr_scale``)."""
    return set(modalities) == {"mobility"}


def retention_flow_components(lc: LossConfig, modalities: Sequence[str]) -> int:
    """Flow-profile components in mobility's input retention for a model of ``modalities``:
    ``lc.solo_flow_components`` when mobility is its only modality, else ``lc.flow_components``."""
    return lc.solo_flow_components if mobility_only(modalities) else lc.flow_components


def flow_target_widths(config: ModelConfig, data: HeteroData) -> tuple[int, ...]:
    """Widths of the flow-profile components the loss terms of a model configured by ``config`` read on ``data``.

    The input-retention target of mobility (``LossConfig.flow_components``, or
    ``solo_flow_components`` when mobility is the model's only modality) and the structure term's
    (``flow_structure_components``) while their terms are on; empty for a model without mobility.
    Training prepares its graph with them (:func:`~urbanrep.experts.mobility.with_flow_profile`).
    """
    wanted = config.modalities if config.modalities is not None else tuple(getattr(data, "modalities", ()) or ())
    if "mobility" not in wanted:
        return ()
    lc = config.loss
    widths = []
    if lc.feature_weight > 0:
        widths.append(retention_flow_components(lc, wanted))
    if lc.structure_weight > 0:
        widths.append(lc.flow_structure_components)
    return tuple(sorted({w for w in widths if w > 0}))


def _mlp(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_channels, out_channels), nn.ELU(), nn.Linear(out_channels, out_channels))


#: The ``ModelConfig`` settings that shape only the embedding a run writes
#: (:meth:`RegionModel.final_embedding`), not training: they may differ from the trained model's when
#: it embeds (``urbanrep embed --set``, :meth:`RegionModel.take_written_settings`).
WRITTEN_FIELDS = ("ensemble_output", "output_smoothing", "output_scales", "output_scale_regions", "output_position",
                  "output_norm", "output_variance", "output_volumes", "volume_scales", "output_counts",
                  "output_counts_skip", "output_counts_shares")


def config_differences(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted name, value in a, value in b)`` for every setting two config dataclasses hold differently."""
    da, db = asdict(a), asdict(b)
    out: list[tuple[str, Any, Any]] = []

    def walk(x: dict[str, Any], y: dict[str, Any], where: str) -> None:
        for key, value in x.items():
            other = y.get(key)
            if isinstance(value, dict) and isinstance(other, dict):
                walk(value, other, f"{where}{key}.")
            elif value != other:
                out.append((f"{where}{key}", value, other))

    walk(da, db, prefix)
    return out


class RegionModel(nn.Module):
    """Modality experts (each a :class:`~urbanrep.experts.moe.ModalityMoE`), fusion and loss heads.

    Args:
        config: Model configuration.
        metadata: Modalities and input widths of the graphs the model will see
            (:meth:`GraphMetadata.from_data`).

    Raises:
        ConfigError: when ``config.modalities`` asks for a modality the graph lacks, or none
            is left.
    """

    def __init__(self, config: ModelConfig, metadata: GraphMetadata) -> None:
        super().__init__()
        self.config, self.metadata = config, metadata
        wanted = config.modalities if config.modalities is not None else metadata.modalities
        missing = [m for m in wanted if m not in metadata.modalities]
        if missing:
            raise ConfigError(f"ModelConfig.modalities asks for {missing} but the graph has only "
                              f"{list(metadata.modalities)}; drop them from the config or rebuild the graph")
        self.modalities: tuple[str, ...] = tuple(m for m in ALL_MODALITIES if m in wanted)
        if not self.modalities:
            raise ConfigError("the model has no modality to learn from: the graph lists none "
                              "(check the bundle's layers/aggregates)")
        self.members: nn.ModuleList | None = None
        if config.ensemble > 1:
            self.members = nn.ModuleList([RegionModel(replace(config, ensemble=1), metadata)
                                          for _ in range(config.ensemble)])
            return
        ec, mc = config.expert, config.moe
        c = ec.out_channels
        self.backbones = nn.ModuleList([GCNStack(ec.hidden_channels, c, ec.num_layers, ec.dropout)
                                        for _ in range(mc.num_shared)])
        experts = {}
        for m in self.modalities:
            in_ch = metadata.channels(m)
            if m == "street_view":
                dedicated = expert_from_config(StreetViewExpert, in_ch, ec)
            elif config.uniform_experts:
                dedicated = expert_from_config(UniformExpert, in_ch, ec, modality=m)
            else:
                dedicated = expert_from_config(get_expert(m), in_ch, ec, num_slices=metadata.num_slices)
            shared = [] if m == "street_view" else [
                expert_from_config(SharedExpert, in_ch, ec, modality=m, backbone=bb) for bb in self.backbones
            ]
            experts[m] = ModalityMoE(dedicated, shared, mc.routing, mc.top_k, mc.gate_dropout,
                                     0 if m == "street_view" else mc.region_attention)
        self.experts = nn.ModuleDict(experts)
        fc = config.fusion
        self.fusion = SpatialFusion(len(self.modalities), c, fc.hidden_channels, fc.mode, fc.pos_frequencies,
                                    fc.use_neighbors, fc.dropout)
        lc, p = config.loss, config.projection_channels
        #: Channels the region-level contrast sees (``loss.contrast_channels``; 0: all of them).
        self.contrast_width = lc.contrast_channels or c
        self.contrast_head = _mlp(self.contrast_width, p)
        self.image_head = _mlp(ec.hidden_channels, p) if "street_view" in self.modalities else None
        use_mob = "mobility" in self.modalities and lc.mobility_weight > 0
        self.mob_src = nn.Linear(c, c) if use_mob else None
        self.mob_dst = nn.Linear(c, c) if use_mob else None
        self.sim_heads = nn.ModuleDict({
            m: nn.Linear(c, p) for m, w in (("poi", lc.poi_similarity_weight),
                                            ("landuse", lc.landuse_similarity_weight))
            if w > 0 and m in self.modalities
        })
        self._warned_names: set[str] = set()
        #: Flow-profile components in mobility's input retention (``LossConfig.flow_components``,
        #: or ``solo_flow_components`` when mobility is the model's only modality).
        self.flow_components = retention_flow_components(lc, self.modalities)
        width = 2 if lc.feature_target == "both" else 1
        retained = [m for m in self.modalities if m != "street_view"]

        def retention_width(m: str) -> int:  # the width of :meth:`retention_target` for ``m``
            return width * metadata.channels(m) + (self.flow_components if m == "mobility" else 0)

        self.feature_heads = nn.ModuleDict({m: nn.Linear(c, retention_width(m))
                                            for m in retained if lc.feature_weight > 0})
        #: Neighbourhood retention (``loss.context_weight``): the same targets, averaged over neighbours.
        self.context_heads = nn.ModuleDict({m: nn.Linear(c, retention_width(m))
                                            for m in retained if lc.context_weight > 0})

    def training_view(self, data: HeteroData, generator: torch.Generator | None = None) -> HeteroData:
        """What a training step runs the forward pass on: ``data`` itself, or with
        ``loss.region_mask`` a view hiding each modality from a random share of the regions
        (:func:`~urbanrep.fusion.losses.hide_regions`); :meth:`loss` then gets ``data``."""
        rate = self.config.loss.region_mask
        return hide_regions(data, rate, generator) if rate > 0 else data

    def step_members(self) -> list[RegionModel]:
        """The models a training step may run forward, loss and backward for one after the other.

        An ensemble's members share no parameters and its objective is the sum of theirs, so
        ``member.loss(data, member(data)).backward()`` member by member gives the same gradients
        as one backward pass through the summed loss while only one member's activations are
        alive at a time (a third of the memory with three members). The dropout draws come in
        the same order as in one joint forward pass as long as a member's loss draws no dropout
        of its own, so the step is bit-identical; the objectives that do (the ``"views"``
        fusion contrast and the street-view point loss run extra forward passes) keep the joint
        pass: ``[self]``.

        Returns:
            The members, or ``[self]`` (a single model, or an ensemble that must step jointly).
            Combine their ``loss`` results with :func:`combine_member_losses`.
        """
        if self.members is None:
            return [self]
        lc = self.config.loss
        views = lc.fusion_weight > 0 and (lc.fusion_contrast == "views" or
                                          (lc.fusion_contrast == "cross" and len(self.modalities) < 2))
        point = lc.point_weight > 0 and "street_view" in self.modalities
        return [self] if views or point else [cast(RegionModel, m) for m in self.members]

    @property
    def out_channels(self) -> int:
        """Width of :meth:`forward`'s embedding (``ensemble * expert.out_channels``)."""
        return self.config.ensemble * self.config.expert.out_channels

    @property
    def row_channels(self) -> int:
        """Width of a region's own row in the embedding a run writes (the members' consensus, or the
        members side by side); the hop blocks, positional columns and volumes follow it, their widths
        depending on the graph (:meth:`written_channels`)."""
        aligned = self.config.ensemble_output == "aligned"
        return self.config.expert.out_channels if aligned else self.out_channels

    def written_channels(self, data: HeteroData) -> int:
        """Width of the embedding a run writes for the graph ``data``."""
        return sum(width for _, width in self.written_layout(data))

    def written_layout(self, data: HeteroData) -> list[tuple[str, int]]:
        """What the columns of the embedding a run writes for ``data`` hold: ``(description, width)``
        per block, in order (:func:`urbanrep.written.written_layout`)."""
        c = self.config
        volumes, counts = appended_names(data, self.modalities, c)
        row = ("the trained embedding" if c.ensemble == 1 else f"the consensus of the {c.ensemble} members"
               if c.ensemble_output == "aligned" else f"the {c.ensemble} members side by side")
        n = num_regions(data)
        return written_layout(self.row_channels, c.output_smoothing, c.output_scales,
                              position_count(n, c.output_position), volumes, row,
                              scale_width(n, self.row_channels, c.output_scale_regions), counts)

    def written_columns(self, data: HeteroData) -> list[dict[str, str]]:
        """:meth:`written_layout` as column ranges (:func:`urbanrep.written.layout_columns`), as
        ``embeddings.parquet`` records them."""
        return layout_columns(self.written_layout(data))

    def final_embedding(self, emb: np.ndarray, data: HeteroData) -> np.ndarray:
        """The embedding a run writes from :meth:`forward`'s, for every region of the graph.

        Concatenated members (``ensemble_output="concat"``, or one member) pass through; with
        ``"aligned"`` the members are rotated onto their consensus and averaged
        (:func:`align_members`). Then, with ``output_smoothing`` > 0, each row is mixed with the
        mean of its adjacent regions' rows (:func:`urbanrep.smoothing.smooth_over_neighbours`), and
        with ``output_scales`` > 0 the neighbour means over 1..``output_scales`` hops are
        appended (:func:`urbanrep.smoothing.neighbourhood_scales`; with ``output_scale_regions``
        > 0 each cut to its leading principal components on a small city), and with ``output_position``
        > 0 the positional columns (:func:`urbanrep.position.append_position`), with
        ``output_volumes`` the regions' own count totals (:func:`urbanrep.volumes.region_volumes`)
        and with ``output_counts`` their count columns (:func:`urbanrep.volumes.region_counts`);
        last, with ``output_norm="unit_variance"``, the whole is scaled to the total variance
        ``output_variance`` (:func:`urbanrep.written.written_transform`). Apply it to the whole graph's embedding at
        once, never per batch.

        Args:
            emb: ``[N, out_channels]`` embedding of every region.
            data: The whole region graph ``emb`` belongs to (its adjacency edges).

        Returns:
            ``[N, written_channels(data)]`` float32.
        """
        if self.config.ensemble > 1 and self.config.ensemble_output == "aligned":
            emb = align_members(emb, self.config.ensemble)
        volumes, counts = appended_columns(data, self.modalities, self.config)
        return written_from_config(emb, data[ADJACENT].edge_index.cpu().numpy(), self.config, volumes, counts)

    def reset_parameters(self) -> None:
        """Re-initialise every layer."""
        if self.members is not None:
            for member in self.members:
                cast(RegionModel, member).reset_parameters()
            return
        reset_modules(self.backbones, *self.experts.values(), self.fusion, *self._head_linears())

    def _project(self, emb: Tensor) -> Tensor:
        """The contrastive projection ``[R, projection_channels]`` of ``emb`` ``[R, C]``'s first
        :attr:`contrast_width` channels (all of them by default)."""
        return self.contrast_head(emb[:, :self.contrast_width])

    def _head_linears(self) -> list[nn.Module]:
        heads: list[nn.Module] = [self.contrast_head, *self.sim_heads.values(), *self.feature_heads.values(),
                                  *self.context_heads.values()]
        heads += [h for h in (self.image_head, self.mob_src, self.mob_dst) if h is not None]
        return [m for h in heads for m in h.modules() if isinstance(m, nn.Linear)]

    def take_written_settings(self, requested: ModelConfig, source: str = "the configuration") -> list[str]:
        """Write embeddings with ``requested``'s written-embedding settings from now on.

        The settings of :data:`WRITTEN_FIELDS` act after training, so a trained model can write
        its embedding another way (without the volumes, say) without retraining. Any other setting
        shaped the weights: if ``requested`` differs from the model in one, nothing changes and a
        :class:`~urbanrep.errors.ConfigError` names it.

        Args:
            requested: The model configuration asked for.
            source: Where ``requested`` came from, for the messages.

        Returns:
            ``"model.<field>=<value> (trained: <value>)"`` for every written-embedding setting taken.
        """
        differ = config_differences(requested, self.config, "model.")
        fixed = [(k, want, have) for k, want, have in differ if k.removeprefix("model.") not in WRITTEN_FIELDS]
        if fixed:
            listed = "; ".join(f"{k}={want!r} (trained: {have!r})" for k, want, have in fixed)
            raise ConfigError(f"{source} differs from the trained model in settings that only training applies: "
                              f"{listed}; train a new model with them, or leave them as trained (only "
                              f"{', '.join('model.' + f for f in WRITTEN_FIELDS)} can change after training)")
        taken = {k.removeprefix("model."): want for k, want, _ in differ}
        if taken:
            self.config = replace(self.config, **{k: getattr(requested, k) for k in taken})
        return [f"{k}={want!r} (trained: {have!r})" for k, want, have in differ]

    def check_graph(self, data: HeteroData) -> None:
        """Raise :class:`GraphError` when ``data`` lacks a modality this model was built for."""
        have = set(data.modalities)
        missing = [m for m in self.modalities if m not in have]
        if missing:
            raise GraphError(f"the graph lacks modalities {missing} this model was trained with "
                             f"(graph has {sorted(have)}); rebuild the graph from the same bundle")
        if ADJACENT not in data.edge_types:
            raise GraphError("the graph has no (region, adjacent, region) edges; rebuild it with build_graph")

    def forward(self, data: HeteroData) -> ModelOutput:
        """Embed every region of ``data``; see :class:`ModelOutput` for shapes."""
        self.check_graph(data)
        if self.members is not None:
            outs = [cast(ModelOutput, member(data)) for member in self.members]
            first = outs[0]
            return ModelOutput(torch.cat([o.embedding for o in outs], -1), first.modality_embeddings, first.masks,
                               torch.stack([o.fusion_weights for o in outs]).mean(0),
                               torch.stack([o.aux_loss for o in outs]).sum(), first.gates, self.modalities,
                               first.prior, outs)
        z, masks, gates = {}, {}, {}
        aux = data[REGION].pos.new_zeros(())
        for m in self.modalities:
            moe = cast(ModalityMoE, self.experts[m])
            if self.config.checkpoint_experts and torch.is_grad_enabled():
                out, a, g = torch.utils.checkpoint.checkpoint(moe, data, use_reentrant=False)
            else:
                out, a, g = moe(data)
            z[m], masks[m], gates[m] = out, moe.region_mask(data), g
            aux = aux + a
        zs = torch.stack([z[m] for m in self.modalities], 1)
        ms = torch.stack([masks[m] for m in self.modalities], 1)
        prior = None
        if self.config.fusion.prior == "coherence":
            prior = graph_noise_prior(data, self.modalities, self.config.expert.log_inputs)
        fused, weights = self.fusion(zs, ms, data[ADJACENT].edge_index, data[REGION].pos, prior)
        return ModelOutput(fused, z, masks, weights, aux, gates, self.modalities, prior)

    def loss(self, data: HeteroData, out: ModelOutput, generator: torch.Generator | None = None
             ) -> tuple[Tensor, dict[str, Tensor]]:
        """The training objective on ``out = self(data)``.

        Args:
            data: The region graph ``out`` was computed from. A mini-batch with context regions
                carries ``data["region"].seed_mask`` ``[N]`` bool: the region-level losses then
                use its seed rows only (:class:`urbanrep.minibatch.BatchSampler`).
            out: Output of :meth:`forward`.
            generator: Seeded generator for augmentations and node sampling.

        Returns:
            ``(total, parts)``: the weighted sum and each unweighted part (detached), keyed
            ``aggregated``, ``fusion``, ``point``, ``mobility``, ``poi_similarity``,
            ``landuse_similarity``, ``features``, ``context``, ``structure``, ``decorrelation``, ``balance`` (only the
            parts switched on and applicable).
        """
        if self.members is not None:
            assert out.members is not None, "an ensemble's loss needs the output of its own forward"
            return combine_member_losses([cast(RegionModel, member).loss(data, member_out, generator)
                                          for member, member_out in zip(self.members, out.members, strict=True)])
        lc = self.config.loss
        n = out.embedding.size(0)
        dev = out.embedding.device
        seeds = data[REGION].get("seed_mask")  # a mini-batch with context regions: loss on its seeds
        if seeds is None:
            rows = sample_nodes(n, lc.max_nodes, generator, dev)
        else:
            rows = seeds.to(dev).nonzero().squeeze(1)
            pick = sample_nodes(rows.numel(), lc.max_nodes, generator, dev)
            rows = rows if pick is None else rows[pick]

        def sel(t: Tensor) -> Tensor:
            return t if rows is None else t[rows]

        near_all = None  # [R, R] selected regions within lc.negative_hops of each other
        if lc.negative_hops > 0:
            adj_ei, hops = data[ADJACENT].edge_index, lc.negative_hops
            if rows is None:  # the whole graph: the same pairs every step and for every member
                near_all = graph_constant("near_pairs", (adj_ei,),
                                          lambda: near_pairs(adj_ei, n, torch.arange(n, device=dev), hops),
                                          extra=(n, hops, str(dev)))
            else:
                near_all = near_pairs(adj_ei, n, rows, hops)

        def near(mask: Tensor) -> Tensor | None:
            """The pairs among the selected rows ``mask`` that are not each other's negatives."""
            return None if near_all is None else near_all[mask][:, mask]

        parts: dict[str, tuple[float, Tensor]] = {}
        if lc.aggregated_weight > 0 and len(self.modalities) >= 2:
            proj = {m: self._project(sel(out.modality_embeddings[m])) for m in self.modalities}
            terms, pair_w = [], []
            for a, b in itertools.combinations(self.modalities, 2):
                both = sel(out.masks[a] & out.masks[b])
                if int(both.sum()) >= 2:
                    terms.append(info_nce(proj[a][both], proj[b][both], lc.temperature, near(both)))
                    if out.prior is not None:  # aligning with a noise-like modality teaches nothing
                        pair_w.append(out.prior[self.modalities.index(a)] * out.prior[self.modalities.index(b)])
            if terms:
                stacked = torch.stack(terms)
                if pair_w:
                    pw = torch.stack(pair_w).to(stacked.dtype)
                    parts["aggregated"] = (lc.aggregated_weight, (stacked * pw).sum() / pw.sum())
                else:
                    parts["aggregated"] = (lc.aggregated_weight, stacked.mean())
        if lc.fusion_weight > 0:
            parts["fusion"] = (lc.fusion_weight, self._fusion_loss(data, out, generator, sel, near))
        if lc.point_weight > 0 and "street_view" in self.modalities:
            parts["point"] = (lc.point_weight, self._point_loss(data, generator))
        if self.mob_src is not None and self.mob_dst is not None:
            et = MODALITY_EDGE["mobility"]
            if et in data.edge_types:
                ei, w = data[et].edge_index, data[et].edge_weight
                od = (dense_od(ei, w, n, rows) if rows is not None else  # all regions: a graph constant
                      graph_constant("dense_od", (ei, w), lambda: dense_od(ei, w, n, None), extra=n))
                emb = sel(out.embedding)
                parts["mobility"] = (lc.mobility_weight,
                                     mobility_reconstruction_loss(self.mob_src(emb), self.mob_dst(emb), od))
        for m, head in self.sim_heads.items():
            w = lc.poi_similarity_weight if m == "poi" else lc.landuse_similarity_weight
            x = data[REGION][feature_key(m)]
            parts[f"{m}_similarity"] = (w, similarity_reconstruction_loss(
                head(sel(out.embedding)), sel(x), sel(out.masks[m])))
        if self.feature_heads:
            terms = []
            for m, head in self.feature_heads.items():
                mk = self._retention_mask(data, out, m)
                target = self.retention_target(data, m, mk)
                terms.append(feature_reconstruction_loss(head(sel(out.embedding)), sel(target), sel(mk)))
            stacked = torch.stack(terms)
            if out.prior is not None:  # noise-like modalities are not worth the embedding's width
                fw = out.prior[[self.modalities.index(m) for m in self.feature_heads]].to(stacked.dtype)
                parts["features"] = (lc.feature_weight, (stacked * fw).sum() / fw.sum())
            else:
                parts["features"] = (lc.feature_weight, stacked.mean())
        if self.context_heads:
            adj, terms = data[ADJACENT].edge_index, []
            for m, head in self.context_heads.items():
                mk = self._retention_mask(data, out, m)
                target = self.retention_target(data, m, mk)
                # a graph constant like the target itself (a new one per step only where regions are hidden)
                around, has = graph_constant("retention_context", (target, mk, adj),
                                             functools.partial(neighbour_mean, target, mk, adj))
                terms.append(feature_reconstruction_loss(head(sel(out.embedding)), sel(around), sel(has)))
            parts["context"] = (lc.context_weight, torch.stack(terms).mean())
        if lc.structure_weight > 0:
            parts["structure"] = (lc.structure_weight, self._structure_loss(data, out, sel))
        if lc.decorrelation_weight > 0:
            parts["decorrelation"] = (lc.decorrelation_weight, decorrelation_loss(sel(out.embedding)))
        if lc.balance_weight > 0 and self.config.moe.routing == "topk" and self.config.moe.num_shared > 0:
            parts["balance"] = (lc.balance_weight, out.aux_loss)
        if not parts:
            total = out.embedding.sum() * 0.0
        else:
            total = torch.stack([w * v.float() for w, v in parts.values()]).sum()
        return total, {k: v.detach() for k, (_, v) in parts.items()}

    def _retention_mask(self, data: HeteroData, out: ModelOutput, modality: str) -> Tensor:
        """``[N]`` bool: the regions with data for ``modality``'s retention terms, those of ``data``
        when the forward pass hid some (``loss.region_mask``, :func:`~urbanrep.fusion.losses.hide_regions`)."""
        if self.config.loss.region_mask > 0:
            return cast(ModalityMoE, self.experts[modality]).region_mask(data)
        return out.masks[modality]

    def retention_target(self, data: HeteroData, modality: str, mask: Tensor) -> Tensor:
        """What the input-retention loss reconstructs for one modality (see ``LossConfig.feature_target``).

        Args:
            data: Region graph.
            modality: An aggregated modality of the model.
            mask: ``[N]`` bool, regions with data for it.

        Returns:
            ``[N, F]`` (``"log"``) or ``[N, 2F]`` (``"both"``) standardised over the present rows.

        A graph without ``feature_names`` for the modality (hand-made, or built before they were
        stored) gets its features as they are for the linear part, with one warning.
        """
        x = data[REGION][feature_key(modality)]
        names = (getattr(data, "feature_names", None) or {}).get(modality)
        et = MODALITY_EDGE["mobility"]
        flows = (data[et].edge_index, getattr(data[et], "edge_weight", None)) if (
            modality == "mobility" and et in data.edge_types) else (None, None)
        lc = self.config.loss
        return graph_constant("retention_target", (x, mask, *flows),
                              lambda: self._retention_target(data, modality, mask),
                              extra=(modality, self.config.expert.log_inputs, lc.feature_target, self.flow_components,
                                     tuple(names) if names is not None else None))

    def _retention_target(self, data: HeteroData, modality: str, mask: Tensor) -> Tensor:
        x = data[REGION][feature_key(modality)].float()
        parts = [masked_standardize(signed_log1p(x) if self.config.expert.log_inputs else x, mask)]
        if self.config.loss.feature_target == "both":
            names = (getattr(data, "feature_names", None) or {}).get(modality)
            if names is None or len(names) != x.size(1):
                if modality not in self._warned_names:
                    self._warned_names.add(modality)
                    log.warning("graph has no feature_names for %r: the linear-scale retention target uses its "
                                "features as they are (rebuild the graph with build_graph to restore counts "
                                "from log1p columns)", modality)
                names = [""] * x.size(1)
            counts = torch.tensor([n.startswith("log1p:") for n in names], dtype=torch.bool, device=x.device)
            linear = torch.where(counts, torch.expm1(x.clamp_min(0)), x)
            parts.append(masked_standardize(linear, mask))
        if modality == "mobility" and self.flow_components > 0:
            parts.append(self.flow_target(data) * mask.unsqueeze(-1).to(x.dtype))
        return torch.cat(parts, 1)

    def flow_target(self, data: HeteroData) -> Tensor:
        """``[N, K]`` leading components of the regions' flow profiles (zeros without OD edges).

        A graph constant: computed once per mobility edge tensor and kept while that tensor is
        the one trained on (see :func:`~urbanrep.experts.flows.flow_profile_components`).
        """
        return graph_flow_components(data, self.flow_components)

    def _structure_loss(self, data: HeteroData, out: ModelOutput, sel: Any) -> Tensor:
        """Input-structure retention (``LossConfig.structure_weight``, :func:`structure_loss`)."""
        views = []
        for i, m in enumerate(self.modalities):
            if m == "street_view":
                continue
            mk = out.masks[m]
            w = out.prior[i] if out.prior is not None else out.embedding.new_ones(())
            rows = standardized_inputs(data[REGION][feature_key(m)], mk, self.config.expert.log_inputs)
            views.append((sel(rows), sel(mk), w))
            if m == "mobility":
                views.append((sel(self.structure_flow_target(data)), sel(mk), w))
        return structure_loss(sel(out.embedding), views)

    def structure_flow_target(self, data: HeteroData) -> Tensor:
        """``[N, K]`` flow-profile components the structure term compares (a cached graph constant)."""
        return graph_flow_components(data, self.config.loss.flow_structure_components)

    def _fusion_loss(self, data: HeteroData, out: ModelOutput, generator: torch.Generator | None,
                     sel: Any, near: Any) -> Tensor:
        lc = self.config.loss
        present = sel(torch.stack([out.masks[m] for m in self.modalities], 1).any(1))
        if lc.fusion_contrast == "views" or (lc.fusion_contrast == "cross" and len(self.modalities) < 2):
            v1 = self(augment_graph(data, lc.feature_drop, lc.edge_drop, generator)).embedding
            v2 = self(augment_graph(data, lc.feature_drop, lc.edge_drop, generator)).embedding
            return info_nce(self._project(sel(v1)[present]), self._project(sel(v2)[present]),
                            lc.temperature, near(present))
        if lc.fusion_contrast == "cross" and len(self.modalities) >= 2:
            return self._cross_fusion_loss(out, sel, near)
        fused = self._project(sel(out.embedding))
        terms = []
        for m in self.modalities:
            mk = sel(out.masks[m])
            if int(mk.sum()) >= 2:
                terms.append(info_nce(fused[mk], self._project(sel(out.modality_embeddings[m]))[mk],
                                      lc.temperature, near(mk)))
        return torch.stack(terms).mean() if terms else fused.sum() * 0.0

    def _cross_fusion_loss(self, out: ModelOutput, sel: Any, near: Any) -> Tensor:
        """Fusion of the other modalities (renormalised region weights) vs each modality, InfoNCE."""
        w = out.fusion_weights
        zs = torch.stack([out.modality_embeddings[m] for m in self.modalities], 1)
        terms = []
        for i, m in enumerate(self.modalities):
            others = torch.cat([w[:, :i], w[:, i].new_zeros(w.size(0), 1), w[:, i + 1:]], 1)
            total = others.sum(1, keepdim=True)
            fused_others = ((others / total.clamp_min(1e-12)).unsqueeze(-1) * zs).sum(1)
            rows = sel(out.masks[m] & (total.squeeze(1) > 1e-6))
            if int(rows.sum()) >= 2:
                terms.append(info_nce(self._project(sel(fused_others))[rows],
                                      self._project(sel(out.modality_embeddings[m]))[rows],
                                      self.config.loss.temperature, near(rows)))
        return torch.stack(terms).mean() if terms else out.embedding.sum() * 0.0

    def _point_loss(self, data: HeteroData, generator: torch.Generator | None) -> Tensor:
        lc = self.config.loss
        moe = self.experts["street_view"]
        expert = moe.dedicated
        assert isinstance(expert, StreetViewExpert) and self.image_head is not None
        hs = []
        for _ in range(2):
            view = augment_graph(data, lc.feature_drop, lc.edge_drop, generator)
            hs.append(expert.encode_images(view[IMAGE].x, expert.image_edges(view)))
        idx = sample_nodes(hs[0].size(0), lc.max_nodes, generator, hs[0].device)
        if idx is not None:
            hs = [h[idx] for h in hs]
        return info_nce(self.image_head(hs[0]), self.image_head(hs[1]), lc.temperature)
