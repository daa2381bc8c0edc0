"""The region graph schema, declared once and checked where graphs are written and read.

A region graph is one :class:`torch_geometric.data.HeteroData`:

Graph-level attributes
    ``schema_version`` (int), ``region_ids`` (list of unique ids, bundle order = node order), ``crs`` (str,
    the metric CRS the ETL worked in), ``modalities`` (list of modalities present); ``adjacency`` (str,
    ``"rook"`` or ``"queen"``: how the ``adjacent`` edges were found; graphs written before it have none).

Node type ``region`` (``N`` nodes)
    ``pos``            float32 ``[N, 2]`` centroid in the metric CRS (metres).
    ``x_<modality>``   float32 ``[N, F_m]`` per-region features of each aggregated-level modality
                       present (``poi``, ``mobility``, ``landuse``, ``road``, ``remote_sensing``);
                       rows of masked regions are zero (checked) and must not be read as data.
    ``mask_<modality>`` bool ``[N]``: True where the region has data for that modality.

Node type ``image`` (``M`` street-view images; only when street view is present)
    ``x``    float32 ``[M, D]`` image features (CLIP).
    ``pos``  float32 ``[M, 2]`` location in the metric CRS.

Edge types (``edge_index`` int64 ``[2, E]``, ``edge_weight`` float32 ``[E]``, no self loops
unless stated)
    ``(region, adjacent, region)``         spatial adjacency, symmetric (kNN fallback for islands).
    ``(region, mobility, region)``         directed OD flows, weight = trip count; ``edge_attr``
                                           float32 ``[E, S]`` per time slice when known.
    ``(region, poi_similar, region)``      kNN on POI-mix cosine similarity, symmetric.
    ``(region, landuse_similar, region)``  kNN on land-use-share cosine similarity, symmetric.
    ``(region, road_connected, region)``   roads crossing shared boundaries, weight = crossings.
    ``(region, rs_similar, region)``       kNN on remote-sensing feature cosine similarity.
    ``(image, spatial_knn, image)``        kNN in space, weight = exp(-d / median d).
    ``(image, feature_knn, image)``        kNN in feature space, weight = cosine similarity.
    ``(image, in_region, region)``         membership of each image in its region, weight 1.
"""

from __future__ import annotations

from typing import Any, NoReturn

import numpy as np
import torch
from torch_geometric.data import HeteroData

from urbanrep.bundle.spec import AGGREGATED_MODALITIES, MODALITIES
from urbanrep.errors import GraphError

GRAPH_SCHEMA_VERSION = 1

REGION = "region"
IMAGE = "image"

ADJACENT = (REGION, "adjacent", REGION)
#: The region-level edge type each aggregated modality contributes.
MODALITY_EDGE: dict[str, tuple[str, str, str]] = {
    "poi": (REGION, "poi_similar", REGION),
    "mobility": (REGION, "mobility", REGION),
    "landuse": (REGION, "landuse_similar", REGION),
    "road": (REGION, "road_connected", REGION),
    "remote_sensing": (REGION, "rs_similar", REGION),
}
IMAGE_SPATIAL = (IMAGE, "spatial_knn", IMAGE)
IMAGE_FEATURE = (IMAGE, "feature_knn", IMAGE)
IMAGE_IN_REGION = (IMAGE, "in_region", REGION)

EDGE_TYPES: tuple[tuple[str, str, str], ...] = (
    ADJACENT, *MODALITY_EDGE.values(), IMAGE_SPATIAL, IMAGE_FEATURE, IMAGE_IN_REGION
)


def feature_key(modality: str) -> str:
    """Name of the region feature attribute of ``modality`` (``x_poi``)."""
    return f"x_{modality}"


def mask_key(modality: str) -> str:
    """Name of the region mask attribute of ``modality`` (``mask_poi``)."""
    return f"mask_{modality}"


def _fail(msg: str) -> NoReturn:
    raise GraphError(f"region graph invalid: {msg}")


def _np(t: torch.Tensor) -> Any:
    """A CPU tensor as a numpy view (numpy reductions are cheaper than torch's on busy CPUs)."""
    return t.detach().numpy() if t.device.type == "cpu" else t.detach().cpu().numpy()


def _finite(t: torch.Tensor) -> bool:
    return bool(np.isfinite(_np(t)).all())


def _check_edges(data: HeteroData, et: tuple[str, str, str], n_src: int, n_dst: int) -> None:
    store = data[et]
    ei: Any = getattr(store, "edge_index", None)
    if ei is None:
        _fail(f"edge type {et} has no edge_index")
    if ei.dtype != torch.long or ei.dim() != 2 or ei.size(0) != 2:
        _fail(f"{et}.edge_index must be int64 [2, E], got {tuple(ei.shape)} {ei.dtype}")
    e = _np(ei)
    if e.size and (int(e[0].min()) < 0 or int(e[0].max()) >= n_src or int(e[1].min()) < 0
                   or int(e[1].max()) >= n_dst):
        _fail(f"{et}.edge_index refers to nodes outside [0, {n_src}) x [0, {n_dst})")
    w: Any = getattr(store, "edge_weight", None)
    if w is None or w.dtype != torch.float32 or w.shape != (ei.size(1),):
        _fail(f"{et}.edge_weight must be float32 [{ei.size(1)}]")
    if not _finite(w):
        _fail(f"{et}.edge_weight has NaN/inf")
    attr: Any = getattr(store, "edge_attr", None)
    if attr is not None:
        if attr.dim() != 2 or attr.size(0) != ei.size(1) or attr.dtype != torch.float32:
            _fail(f"{et}.edge_attr must be float32 [{ei.size(1)}, S]")
        if not _finite(attr):
            _fail(f"{et}.edge_attr has NaN/inf")


def validate_graph(data: HeteroData) -> HeteroData:
    """Check ``data`` against the schema above and return it.

    Raises:
        GraphError: naming the first attribute that is missing or has the wrong dtype/shape.
    """
    for key in ("schema_version", "region_ids", "crs", "modalities"):
        if key not in data:
            _fail(f"graph attribute {key!r} is missing")
    if data.schema_version != GRAPH_SCHEMA_VERSION:
        _fail(f"schema_version {data.schema_version} != {GRAPH_SCHEMA_VERSION}")
    unknown = [m for m in data.modalities if m not in MODALITIES]
    if unknown:
        _fail(f"unknown modalities {unknown}")
    if REGION not in data.node_types:
        _fail("node type 'region' is missing")
    reg = data[REGION]
    n = len(data.region_ids)
    if reg.num_nodes != n:
        _fail(f"region.num_nodes={reg.num_nodes} but {n} region_ids")
    if len(set(data.region_ids)) != n:
        _fail("region_ids are not unique")
    pos: Any = getattr(reg, "pos", None)
    if pos is None or pos.shape != (n, 2) or pos.dtype != torch.float32:
        _fail(f"region.pos must be float32 [{n}, 2]")
    for m in AGGREGATED_MODALITIES:
        x: Any = getattr(reg, feature_key(m), None)
        mask: Any = getattr(reg, mask_key(m), None)
        if m in data.modalities:
            if x is None or mask is None:
                _fail(f"modality {m} is listed but region.{feature_key(m)} / {mask_key(m)} is missing")
            if x.dim() != 2 or x.size(0) != n or x.dtype != torch.float32:
                _fail(f"region.{feature_key(m)} must be float32 [{n}, F], got {tuple(x.shape)} {x.dtype}")
            if not _finite(x):
                _fail(f"region.{feature_key(m)} has NaN/inf")
            if mask.dtype != torch.bool or mask.shape != (n,):
                _fail(f"region.{mask_key(m)} must be bool [{n}]")
            if _np(x)[~_np(mask)].any():
                _fail(f"region.{feature_key(m)} has non-zero rows where {mask_key(m)} is False")
        elif x is not None:
            _fail(f"region.{feature_key(m)} present but {m} not listed in modalities")
    sizes: dict[str, int] = {REGION: n}
    if "street_view" in data.modalities:
        if IMAGE not in data.node_types:
            _fail("street_view listed but node type 'image' is missing")
        img = data[IMAGE]
        m_img = img.num_nodes
        x_img: Any = getattr(img, "x", None)
        pos_img: Any = getattr(img, "pos", None)
        if x_img is None or x_img.dim() != 2 or x_img.size(0) != m_img or x_img.dtype != torch.float32:
            _fail(f"image.x must be float32 [{m_img}, D]")
        if not _finite(x_img):
            _fail("image.x has NaN/inf")
        if pos_img is None or pos_img.shape != (m_img, 2) or pos_img.dtype != torch.float32:
            _fail(f"image.pos must be float32 [{m_img}, 2]")
        sizes[IMAGE] = m_img
    for et in data.edge_types:
        if et not in EDGE_TYPES:
            _fail(f"unknown edge type {et}; valid: {EDGE_TYPES}")
        _check_edges(data, et, sizes.get(et[0], 0), sizes.get(et[2], 0))
    if ADJACENT not in data.edge_types:
        _fail("edge type (region, adjacent, region) is required")
    return data


def graph_counts(data: HeteroData) -> dict[str, Any]:
    """Counts per node and edge type, for manifests and ``urbanrep info``."""
    return {
        "nodes": {nt: int(data[nt].num_nodes) for nt in data.node_types},
        "edges": {"__".join(et): int(data[et].edge_index.size(1)) for et in data.edge_types},
        "modalities": list(data.modalities),
        "masked_regions": {m: int((~data[REGION][mask_key(m)]).sum()) for m in data.modalities
                           if m in AGGREGATED_MODALITIES},
    }


def graph_adjacency(data: HeteroData) -> str:
    """How ``data``'s ``adjacent`` edges were found (``"rook"`` or ``"queen"``): its ``adjacency``
    attribute, or ``"queen"`` for a graph written before it (every graph was queen then)."""
    return str(getattr(data, "adjacency", "queen"))
