"""The expert interface, shared building blocks and the expert registry.

Every expert maps a region graph (:mod:`urbanrep.graphs.schema`) to one embedding per region::

    expert(data: HeteroData) -> Tensor [num_regions, out_channels]

and reports which regions actually carry its modality through :meth:`Expert.region_mask`.
The mixture-of-experts gate, the fusion and the losses see nothing but this interface.

Regions whose modality is masked (``mask_<m>`` False) never feed their zero rows to a network:
:class:`MaskedInputEncoder` swaps them for a learned "missing" token after the input projection.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch_geometric.data import HeteroData

from urbanrep.errors import ConfigError, GraphError
from urbanrep.graphs.cache import graph_constant
from urbanrep.graphs.schema import ADJACENT, MODALITY_EDGE, REGION, feature_key, mask_key

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable

EdgeType = tuple[str, str, str]


@dataclass(frozen=True)
class ExpertConfig:
    """Sizes and regularisation shared by every expert (mirrors the expert constructors).

    Attributes:
        hidden_channels: Width of the input projection and of the hidden GNN layers.
        out_channels: Width of each expert's region embedding.
        num_layers: Message-passing layers per expert (street view: per level).
        dropout: Dropout between layers.
        input_dropout: Dropout on the standardised input features (remote sensing uses
            ``max(input_dropout, 0.3)`` because its 512-d image features are noisy).
        heads: Attention heads (POI expert).
        log_inputs: Apply ``sign(x) * log1p(|x|)`` before standardising (count-like inputs).
        flow_inputs: Mobility expert: also feed it this many leading principal components of each
            region's flow profile (where its trips go and where its visitors come from,
            :func:`~urbanrep.experts.flows.flow_profile_components`) beside its flow totals. The
            OD structure otherwise reaches the expert only through message passing. 0: off.
            Default 16, chosen on the development cities only (round 2026-12-07w,
            ``experiments/DESIGN_SELECTION_2026-12-07w.md``): a tie on the strict score (0.537 against 0.539
            without) that the declared rule hands to the paper protocol (0.526 against 0.517);
            with mobility alone (round 2026-12-07x) 0.316 against 0.306. Models saved before the
            option read back with 0, as they were trained.
    """

    hidden_channels: int = 64
    out_channels: int = 64
    num_layers: int = 2
    dropout: float = 0.1
    input_dropout: float = 0.0
    heads: int = 4
    log_inputs: bool = True
    flow_inputs: int = 16

    def __post_init__(self) -> None:
        for name in ("hidden_channels", "out_channels", "num_layers", "heads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"ExpertConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.flow_inputs < 0:
            raise ConfigError(f"ExpertConfig.flow_inputs must be >= 0 (0 switches it off), got {self.flow_inputs}")
        for name in ("dropout", "input_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"ExpertConfig.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.hidden_channels % self.heads:
            raise ConfigError(f"ExpertConfig.hidden_channels ({self.hidden_channels}) must be divisible by "
                              f"heads ({self.heads})")


def signed_log1p(x: Tensor) -> Tensor:
    """``sign(x) * log1p(|x|)``: compresses heavy-tailed counts, keeps signs of embeddings."""
    return torch.sign(x) * torch.log1p(x.abs())


def masked_standardize(x: Tensor, mask: Tensor, eps: float = 1e-6) -> Tensor:
    """Standardise each column over the rows where ``mask`` is True.

    The statistics are a permutation-invariant function of the present rows, so the result is
    equivariant to region reordering. Constant columns are centred only.

    Args:
        x: ``[N, F]`` features.
        mask: ``[N]`` bool, rows holding real data.

    Returns:
        ``[N, F]`` standardised features; masked rows are zero.
    """
    w = mask.to(x.dtype).unsqueeze(-1)
    count = w.sum().clamp_min(1.0)
    mean = (x * w).sum(0) / count
    var = (((x - mean) * w) ** 2).sum(0) / count
    std = torch.where(var > eps, var.sqrt(), torch.ones_like(var))
    return ((x - mean) / std) * w


def standardized_inputs(x: Tensor, mask: Tensor, log_inputs: bool = True) -> Tensor:
    """:func:`masked_standardize` of ``x`` (after :func:`signed_log1p` when ``log_inputs``).

    A graph constant for a graph's stored features: computed once and reused while ``x`` and
    ``mask`` are the same, unchanged tensors (:func:`urbanrep.graphs.cache.graph_constant`).
    """
    return graph_constant("standardized", (x, mask),
                          lambda: masked_standardize(signed_log1p(x) if log_inputs else x, mask), extra=log_inputs)


class MaskedInputEncoder(nn.Module):
    """Project region features and replace masked regions by a learned "missing" token.

    ``x -> signed_log1p -> standardise over present rows -> dropout -> Linear -> LayerNorm -> ELU``;
    rows with ``mask`` False get the token instead of the projection of their zero row.

    Args:
        in_channels: Input width ``F``.
        out_channels: Output width.
        input_dropout: Dropout on the standardised input.
        log_inputs: Apply :func:`signed_log1p` first.
    """

    def __init__(self, in_channels: int, out_channels: int, input_dropout: float = 0.0,
                 log_inputs: bool = True) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.log_inputs = log_inputs
        self.input_dropout = nn.Dropout(input_dropout)
        self.lin = nn.Linear(in_channels, out_channels)
        self.norm = nn.LayerNorm(out_channels)
        self.missing = nn.Parameter(torch.empty(out_channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.lin.reset_parameters()
        self.norm.reset_parameters()
        nn.init.normal_(self.missing, std=1.0 / math.sqrt(self.out_channels))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """Encode ``x`` ``[N, F]`` with ``mask`` ``[N]`` into ``[N, out_channels]``."""
        x = self.input_dropout(standardized_inputs(x, mask, self.log_inputs))
        h = self.norm(self.lin(x))
        h = torch.where(mask.unsqueeze(-1), h, self.missing.to(h.dtype).expand_as(h))
        return torch.nn.functional.elu(h)


def get_edges(data: HeteroData, edge_type: EdgeType, fallback: EdgeType | None = ADJACENT
              ) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(edge_index [2, E], edge_weight [E], edge_attr [E, S] or None)`` of an edge type.

    Falls back to ``fallback`` (region adjacency by default) when the graph lacks ``edge_type``.

    Raises:
        GraphError: when neither edge type exists.
    """
    for et in (edge_type, fallback):
        if et is not None and et in data.edge_types:
            store = data[et]
            ei = store.edge_index
            w = getattr(store, "edge_weight", None)
            if w is None:  # one tensor per graph, so operators built from it are cached (graphs/cache.py)
                w = graph_constant("ones", (ei,), functools.partial(torch.ones, ei.size(1), device=ei.device))
            return ei, w, getattr(store, "edge_attr", None)
    raise GraphError(f"region graph has no edge type {edge_type} (nor {fallback}); "
                     "rebuild it with urbanrep.graphs.build_graph")


def num_regions(data: HeteroData) -> int:
    """Number of region nodes."""
    return int(data[REGION].num_nodes)


class Expert(nn.Module):
    """Base class: one modality in, one ``[num_regions, out_channels]`` embedding out.

    Subclasses set :attr:`modality` and implement :meth:`forward` and :meth:`reset_parameters`.

    Attributes:
        modality: The modality this expert reads.
        out_channels: Width of its output.
    """

    modality: str = ""
    out_channels: int

    def region_mask(self, data: HeteroData) -> Tensor:
        """``[N]`` bool: regions where this expert's modality has data."""
        return data[REGION][mask_key(self.modality)]

    def features(self, data: HeteroData) -> tuple[Tensor, Tensor]:
        """``(x [N, F], mask [N])`` of this expert's aggregated modality."""
        reg = data[REGION]
        key = feature_key(self.modality)
        if key not in reg:
            raise GraphError(f"region graph has no {key}; the model was built for modality "
                             f"{self.modality!r} but the graph lists {list(data.modalities)}")
        return reg[key], reg[mask_key(self.modality)]

    def view_edges(self, data: HeteroData) -> tuple[Tensor, Tensor, Tensor | None]:
        """Edges of this modality's own view (adjacency when the graph has none)."""
        return get_edges(data, MODALITY_EDGE.get(self.modality, ADJACENT))

    def forward(self, data: HeteroData) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def reset_parameters(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class ResidualStackExpert(Expert):
    """The common expert shape: masked input encoder -> message-passing layers, each inside a
    residual block -> linear head. Subclasses choose the layers and write :meth:`forward`.

    Args:
        in_channels: ``F`` input features.
        hidden_channels: Width of the encoder and the layers.
        out_channels: Width of the output.
        num_layers: Residual blocks (one per message-passing step).
        dropout: Dropout inside the blocks.
        input_dropout: Dropout on the standardised input.
        log_inputs: Log-compress the inputs.
        make_layers: Called after the encoder is built (so parameter initialisation keeps one
            order); returns attribute name -> ``nn.ModuleList`` of message-passing layers.
    """

    def __init__(self, in_channels: int, hidden_channels: int, out_channels: int, num_layers: int,
                 dropout: float, input_dropout: float, log_inputs: bool,
                 make_layers: Callable[[], dict[str, nn.ModuleList]]) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.encoder = MaskedInputEncoder(in_channels, hidden_channels, input_dropout, log_inputs)
        layers = make_layers()
        for name, modules in layers.items():
            setattr(self, name, modules)
        self._layer_names = tuple(layers)
        self.blocks = nn.ModuleList([ResidualBlock(hidden_channels, dropout) for _ in range(num_layers)])
        self.head = nn.Linear(hidden_channels, out_channels)

    def reset_parameters(self) -> None:
        self.encoder.reset_parameters()
        reset_modules(*(getattr(self, n) for n in self._layer_names), self.blocks)
        self.head.reset_parameters()


def reset_all(modules: nn.Module) -> None:
    """Call ``reset_parameters`` on every sub-module that has one (PyG layers, Linear, norms)."""
    for m in modules.modules():
        if m is modules:
            continue
        fn = getattr(m, "reset_parameters", None)
        if callable(fn):
            fn()


def reset_modules(*modules: nn.Module) -> None:
    """Call ``reset_parameters()`` of each module, in order (members of a ``ModuleList`` one by one).

    Raises:
        TypeError: for a module without ``reset_parameters``.
    """
    for mod in modules:
        for item in (list(mod) if isinstance(mod, nn.ModuleList) else [mod]):
            reset = getattr(item, "reset_parameters", None)
            if not callable(reset):
                raise TypeError(f"{type(item).__name__} has no reset_parameters()")
            reset()


class ResidualBlock(nn.Module):
    """``h + dropout(act(norm(conv(h))))``: the layer wrapper every expert stacks.

    Args:
        channels: Width in and out.
        dropout: Dropout after the activation.
    """

    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.dropout = nn.Dropout(dropout)

    def reset_parameters(self) -> None:
        self.norm.reset_parameters()

    def forward(self, h: Tensor, update: Tensor) -> Tensor:
        """Combine ``h`` ``[N, C]`` with a conv output ``update`` ``[N, C]``."""
        return h + self.dropout(torch.nn.functional.elu(self.norm(update)))


#: Registry of dedicated experts: modality name -> class. Filled by the expert modules.
EXPERTS: dict[str, type[Expert]] = {}


def register_expert(name: str) -> Callable[[type[Expert]], type[Expert]]:
    """Class decorator adding an expert to :data:`EXPERTS` under ``name``."""

    def deco(cls: type[Expert]) -> type[Expert]:
        EXPERTS[name] = cls
        return cls

    return deco


def get_expert(name: str) -> type[Expert]:
    """The expert class registered under ``name`` (a modality, or ``"shared"`` / ``"uniform"``).

    Raises:
        ConfigError: for an unknown name, listing the registered ones.
    """
    import urbanrep.experts  # noqa: F401  (fills the registry)

    if name not in EXPERTS:
        raise ConfigError(f"unknown expert {name!r}; registered experts: {', '.join(sorted(EXPERTS))}")
    return EXPERTS[name]


def expert_from_config(cls: type[Expert], in_channels: int, config: ExpertConfig, **extra: object) -> Expert:
    """Build ``cls`` from ``in_channels`` and the :class:`ExpertConfig` fields its constructor takes."""
    import dataclasses
    import inspect

    params = inspect.signature(cls.__init__).parameters
    kwargs = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name in params}
    kwargs.update({k: v for k, v in extra.items() if k in params})
    return cls(in_channels, **kwargs)  # type: ignore[call-arg]
