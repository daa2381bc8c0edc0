"""Configuration of the ETL that turns a city bundle into a region graph."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from urbanrep.bundle.spec import MODALITIES
from urbanrep.errors import ConfigError
from urbanrep.images import ImageConfig

Source = Literal["auto", "raw", "aggregate"]
_SOURCES = ("auto", "raw", "aggregate")


@dataclass(frozen=True)
class GraphConfig:
    """How :func:`urbanrep.graphs.build_graph` builds a region graph.

    Attributes:
        metric_crs: CRS the ETL works in (any ``pyproj`` input, e.g. ``"EPSG:32618"``). ``None``:
            the bundle CRS when it is projected in metres, else ``regions.estimate_utm_crs()``.
        modalities: Modalities to build (``None`` = every modality the bundle has).
        adjacency: ``"rook"`` (the default since design round 2026-12-07ad): only regions sharing
            a stretch of boundary (or overlapping) are neighbours; ``"queen"``: regions sharing any
            boundary point, a corner too (the convention of the NYC-180 releases). On the development
            cities rook graphs gave better embeddings (experiments/DESIGN_SELECTION.md); on hexagons
            the two are the same.
        adjacency_tolerance: Distance in metres under which two regions count as touching
            (bridges small digitising gaps); 0 = exact topology. Under rook adjacency the two
            boundaries must run that close for more than 4 tolerances (a corner contact stays
            no neighbour); before 2026-12-07 a tolerance made rook graphs queen graphs.
        adjacency_fallback_k: Regions without any neighbour (islands) are linked to this many
            nearest regions by centroid distance (both directions).
        similarity_k: ``k`` of the cosine kNN graphs (POI, land use, remote sensing).
        knn_exact_max: Feature kNN graphs (POI, land use, remote sensing, street-view features)
            over at most this many nodes are exact; above it they use a seeded approximate search
            (random-projection forest + NN-descent, recall typically > 95 %), because exact kNN in
            10+ dimensions is quadratic. Both are deterministic and independent of row order.
        poi_source / landuse_source / remote_sensing_source / mobility_source: ``"auto"``
            uses the bundle's aggregates of that modality when it has any (published at full
            scale), else the raw layer; ``"raw"`` / ``"aggregate"`` force one side (an error
            when that side is absent).
        mobility_matrix: Name of the OD matrix aggregate; ``None`` = the first unsliced
            mobility matrix (else the first sliced one).
        mobility_slice_matrix: Name of a sliced OD matrix aggregate whose per-slice counts
            become ``edge_attr``; ``None`` = the chosen matrix itself when sliced, else the
            first sliced mobility matrix; ``""`` = no slices.
        time_slices: Number of equal time-of-day bins raw trips are split into.
        max_road_classes: Road classes kept as separate features (longest first); the rest
            are summed into ``"other"``.
        road_node_precision: Road vertices closer than this (metres) are one graph node.
        road_betweenness_samples: Source nodes sampled for road betweenness centrality
            (networkx, seeded); 0 disables it (it is the one road measure that does not
            scale linearly).
        image_knn_k: ``k`` of the street-view image kNN graphs (space and feature).
        images: Image encoder settings, used only for image layers without a ``feature`` column.
        point_chunk: Points located per chunk by the spatial index (bounds peak memory).
        engine: Where the point-in-region join runs: ``"local"`` (in-process, the default) or
            ``"dask"`` (partitions on a Dask cluster; ``pip install 'urbanrep[distributed]'``).
            Both give the same graph.
        dask_scheduler: Address of a running Dask scheduler (``"tcp://host:8786"``); ``None``
            starts a local cluster once per process.
        dask_partitions: Blocks a point layer is split into on Dask (>= one per worker thread).
        seed: Seed of every sampled quantity (road betweenness, approximate kNN).
    """

    metric_crs: str | None = None
    modalities: tuple[str, ...] | None = None
    adjacency: Literal["queen", "rook"] = "rook"
    adjacency_tolerance: float = 0.0
    adjacency_fallback_k: int = 3
    similarity_k: int = 10
    knn_exact_max: int = 5_000
    poi_source: Source = "auto"
    landuse_source: Source = "auto"
    remote_sensing_source: Source = "auto"
    mobility_source: Source = "auto"
    mobility_matrix: str | None = None
    mobility_slice_matrix: str | None = None
    time_slices: int = 7
    max_road_classes: int = 12
    road_node_precision: float = 0.01
    road_betweenness_samples: int = 0
    image_knn_k: int = 8
    images: ImageConfig = field(default_factory=ImageConfig)
    point_chunk: int = 1_000_000
    seed: int = 0
    engine: Literal["local", "dask"] = "local"
    dask_scheduler: str | None = None
    dask_partitions: int = 8

    def __post_init__(self) -> None:
        if self.modalities is not None:
            if isinstance(self.modalities, str):
                raise ConfigError(f"GraphConfig.modalities must be a tuple of names, got the string {self.modalities!r}")
            unknown = [m for m in self.modalities if m not in MODALITIES]
            if unknown:
                raise ConfigError(f"GraphConfig.modalities: unknown {unknown}; valid: {', '.join(MODALITIES)}")
            object.__setattr__(self, "modalities", tuple(self.modalities))
        if self.adjacency not in ("queen", "rook"):
            raise ConfigError(f"GraphConfig.adjacency={self.adjacency!r}; use 'queen' or 'rook'")
        for name in ("poi_source", "landuse_source", "remote_sensing_source", "mobility_source"):
            if getattr(self, name) not in _SOURCES:
                raise ConfigError(f"GraphConfig.{name}={getattr(self, name)!r}; use one of {', '.join(_SOURCES)}")
        positive = ("similarity_k", "image_knn_k", "time_slices", "max_road_classes", "point_chunk", "knn_exact_max",
                    "dask_partitions")
        if self.engine not in ("local", "dask"):
            raise ConfigError(f"GraphConfig.engine={self.engine!r}; use 'local' or 'dask'")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"GraphConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("adjacency_fallback_k", "road_betweenness_samples"):
            if int(getattr(self, name)) < 0:
                raise ConfigError(f"GraphConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not self.adjacency_tolerance >= 0:
            raise ConfigError(f"GraphConfig.adjacency_tolerance must be >= 0 metres, got {self.adjacency_tolerance}")
        if not self.road_node_precision > 0:
            raise ConfigError(f"GraphConfig.road_node_precision must be > 0 metres, got {self.road_node_precision}")
        if not isinstance(self.images, ImageConfig):
            raise ConfigError(f"GraphConfig.images must be an urbanrep.images.ImageConfig, got {type(self.images).__name__}")

    def wants(self, modality: str) -> bool:
        """True when ``modality`` is to be built (if the bundle has it)."""
        return self.modalities is None or modality in self.modalities

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (for graph manifests)."""
        return asdict(self)
