"""City bundle → one PyG ``HeteroData`` region graph (see :mod:`urbanrep.graphs.schema`).

>>> from urbanrep.bundle import read_bundle
>>> from urbanrep.graphs import GraphConfig, build_graph, save_graph
>>> data, report = build_graph(read_bundle("bundles/nyc"), GraphConfig(similarity_k=10))
>>> save_graph(data, report, "runs/nyc/graph.pt")

The build works in a metric CRS, locates points with a spatial index, never loops over regions
in Python and records in the report every record it dropped, every region it masked and every
fallback it used. Same bundle and config → identical graph.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Iterator
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyproj
import shapely
import torch
from torch_geometric.data import HeteroData

from urbanrep.bundle import CityBundle, ensure_validated
from urbanrep.bundle.partitioned import ParquetLayer, crs_steps
from urbanrep.bundle.spec import AGGREGATED_MODALITIES, RAW_LAYERS
from urbanrep.engine import engine_for
from urbanrep.errors import GraphError
from urbanrep.graphs._images import layer_features
from urbanrep.graphs._spatial import Edges, ModalityResult, RegionIndex, canonical_rank, resolve_metric_crs
from urbanrep.graphs.adjacency import adjacency_edges
from urbanrep.graphs.config import GraphConfig
from urbanrep.graphs.io import load_graph, save_graph
from urbanrep.graphs.landuse import build_landuse
from urbanrep.graphs.mobility import (
    FlowTable,
    build_mobility,
    flows_from_parquet,
    flows_from_trips,
    matrix_flows,
)
from urbanrep.graphs.poi import build_poi
from urbanrep.graphs.remote_sensing import build_remote_sensing
from urbanrep.graphs.road import build_road
from urbanrep.graphs.schema import (
    ADJACENT,
    GRAPH_SCHEMA_VERSION,
    IMAGE,
    IMAGE_FEATURE,
    IMAGE_IN_REGION,
    IMAGE_SPATIAL,
    MODALITY_EDGE,
    REGION,
    feature_key,
    mask_key,
    validate_graph,
)
from urbanrep.graphs.street_view import build_street_view
from urbanrep.progress import start_progress

log = logging.getLogger(__name__)

__all__ = ["build_graph", "input_hashes", "load_graph", "save_graph"]

_LAYER_OF = {mod: lay for lay, mod in RAW_LAYERS.items()}


def _peak_rss_mb() -> float | None:
    """Peak resident memory of the process so far (MB): ``VmHWM`` on Linux, else ``ru_maxrss``."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # not on Unix
        return None
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(rss / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


class _Stages:
    """Wall time, CPU time of the process and its peak RSS so far, per named stage.

    CPU time next to wall time shows how much of a stage was spent waiting for a busy CPU
    (CPU < wall) or running on several cores (CPU > wall).
    """

    def __init__(self, total: int | None = None) -> None:
        self.bar = start_progress("graph building", total)
        self.times: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.peak_rss_mb: dict[str, float | None] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.times[name] = round(self.times.get(name, 0.0) + time.perf_counter() - t0, 4)
            self.cpu[name] = round(self.cpu.get(name, 0.0) + time.process_time() - c0, 4)
            self.peak_rss_mb[name] = _peak_rss_mb()
            self.bar.update(1, stage=name)
            log.debug("stage %s: %.3f s", name, self.times[name])


def _to_metric(df: pd.DataFrame, crs: pyproj.CRS, layer: str) -> pd.DataFrame:
    """Reproject every geometry column of a layer to the metric CRS (no copy when already there)."""
    geo_cols = [c for c in df.columns if isinstance(df[c].dtype, gpd.array.GeometryDtype)]
    todo = []
    for c in geo_cols:
        col_crs = df[c].array.crs
        if col_crs is None:
            raise GraphError(f"layer {layer!r} column {c!r} has no CRS; validate the bundle first (urbanrep validate)")
        if not pyproj.CRS.from_user_input(col_crs).equals(crs):
            todo.append(c)
    if not todo:  # already metric: no copy (layers can hold tens of millions of rows)
        return df if isinstance(df, gpd.GeoDataFrame) or not geo_cols else gpd.GeoDataFrame(df)
    out = df.copy() if isinstance(df, gpd.GeoDataFrame) else gpd.GeoDataFrame(df)
    for c in todo:
        out[c] = gpd.GeoSeries(df[c]).to_crs(crs)
    return out


def _hash_file(h: Any, layer: ParquetLayer) -> None:
    """Hash a partitioned layer's file bytes (streamed; the layer is never loaded)."""
    h.update(f"parquet-file rows={layer.rows};".encode())
    with open(layer.path, "rb") as fh:
        for block in iter(lambda: fh.read(2**24), b""):
            h.update(block)


def _hash_frame(h: Any, df: pd.DataFrame) -> None:
    h.update(repr(list(map(str, df.columns))).encode())
    h.update(str(len(df)).encode())
    for c in df.columns:
        col = df[c]
        if isinstance(col.dtype, gpd.array.GeometryDtype):
            geoms = np.asarray(col.values, dtype=object)
            h.update(shapely.get_type_id(geoms).astype(np.int8).tobytes())
            h.update(shapely.get_num_coordinates(geoms).astype(np.int64).tobytes())
            h.update(np.ascontiguousarray(shapely.get_coordinates(geoms)).tobytes())
            continue
        try:
            h.update(pd.util.hash_pandas_object(col, index=False).to_numpy().tobytes())
        except TypeError:  # list-valued cells (image feature vectors)
            cells = col.map(lambda v: b"-" if v is None else np.asarray(v, dtype=np.float32).tobytes() + b";")
            h.update(b"".join(cells.tolist()))


def input_hashes(bundle: CityBundle) -> dict[str, Any]:
    """SHA-256 of every table of the bundle as held in memory (regions, layers, aggregates).

    Hashes the data itself (values and coordinates, not file bytes), so a bundle read from disk
    and the same bundle built in memory hash alike. A layer kept on disk
    (:class:`~urbanrep.bundle.partitioned.ParquetLayer`) is hashed by its file bytes, streamed.
    """
    tables: dict[str, Any] = {"regions": bundle.regions}
    for layer in RAW_LAYERS:
        df = getattr(bundle, layer)
        if df is not None:
            tables[layer] = df
    for name in sorted(bundle.aggregates):
        tables[f"aggregates/{name}"] = bundle.aggregates[name].table
    out: dict[str, str] = {}
    combined = hashlib.sha256()
    for name, df in tables.items():
        h = hashlib.sha256()
        if isinstance(df, ParquetLayer):
            _hash_file(h, df)
        else:
            _hash_frame(h, df)
        out[name] = h.hexdigest()
        combined.update(f"{name}={out[name]};".encode())
    crs = bundle.crs
    combined.update(str(pyproj.CRS.from_user_input(crs).to_wkt() if crs is not None else None).encode())
    return {"method": "sha256 of in-memory tables", "bundle": bundle.name, "tables": out,
            "combined": combined.hexdigest()}


def _edges_to_store(data: HeteroData, et: tuple[str, str, str], edges: Edges) -> None:
    data[et].edge_index = torch.from_numpy(np.ascontiguousarray(edges.index, dtype=np.int64))
    data[et].edge_weight = torch.from_numpy(np.ascontiguousarray(edges.weight, dtype=np.float32))
    if edges.attr is not None:
        data[et].edge_attr = torch.from_numpy(np.ascontiguousarray(edges.attr, dtype=np.float32))


def _dropped_lines(report: dict[str, Any]) -> list[str]:
    """One human-readable line per kind of dropped record, masked region set or fallback."""
    out = []
    adj = report.get("adjacency", {})
    if adj.get("isolated_regions"):
        out.append(f"adjacency: {adj['isolated_regions']} regions without a neighbour got "
                   f"{adj['fallback_k']} nearest-centroid neighbours ({adj['isolated_region_ids']})")
    messages = {
        "outside_regions": "records outside every region (not counted in any region)",
        "no_category": "POIs without a category (dropped)",
        "missing_coordinates": "records with missing / non-finite coordinates (dropped)",
        "non_point_geometries": "records whose geometry is not a point (dropped)",
        "no_class": "records without a class (dropped)",
        "dropped_trips": "trips with an end outside every region or an unknown zone id (dropped)",
        "trips_without_time": "trips without a time (in totals, not in time slices)",
        "unusable_tiles": "tiles without usable features (dropped)",
        "tiles_outside_regions": "tiles outside every region (unused)",
        "unreadable_images": "images that could not be read (dropped)",
        "dropped_unusable": "images without usable features (dropped)",
        "nodes_outside_regions": "road nodes outside every region (no region measures)",
        "slice_pairs_not_in_od": "OD pairs of the sliced matrix absent from the OD matrix (ignored for edge_attr)",
        "masked_regions": "regions without data (mask False, zero features)",
    }
    for mod in (*AGGREGATED_MODALITIES, "street_view"):
        rep = report.get(mod)
        if not isinstance(rep, dict):
            continue
        for key, text in messages.items():
            value = rep.get(key) or rep.get("images_report", {}).get(key)
            if value:
                out.append(f"{mod}: {value} {text}")
    for mod, why in report.get("skipped", {}).items():
        out.append(f"{mod}: not built ({why})")
    return out


def _build_modality(mod: str, bundle: CityBundle, config: GraphConfig, ctx: dict[str, Any]) -> ModalityResult | None:
    ids, ids_arr, rank, index, crs = ctx["ids"], ctx["ids_arr"], ctx["rank"], ctx["index"], ctx["crs"]
    layer_name = _LAYER_OF[mod]
    raw = getattr(bundle, layer_name)
    if isinstance(raw, ParquetLayer) and mod not in ("poi", "mobility"):
        raise GraphError(f"layer {layer_name!r} ({raw.path}) is held as a partitioned Parquet layer, which only "
                         "'pois' and 'trips' support; read the bundle with partitioned=('pois', 'trips')")
    if mod == "mobility":
        matrices = bundle.aggregates_for("mobility", "matrix")
        vectors = bundle.aggregates_for("mobility", "vector")
        setting = config.mobility_source
        if setting == "auto":
            source = "aggregate" if (matrices or raw is None) else "raw"
        else:
            source = setting
        if source == "raw":
            if raw is None:
                raise GraphError("mobility_source='raw' but the bundle has no 'trips' layer; use 'auto' or add trips")
            if isinstance(raw, ParquetLayer):
                flows, rep = flows_from_parquet(raw, index, ids, config.time_slices, _steps(raw, bundle, crs),
                                                index.engine)
            else:
                flows, rep = flows_from_trips(_to_metric(raw, crs, "trips"), index, ids, config.time_slices)
            if matrices or vectors:
                rep["unused_aggregates"] = [a.name for a in matrices + vectors]
            return build_mobility(ids, flows=flows, report=rep)
        if not (matrices or vectors):
            raise GraphError("mobility_source='aggregate' but the bundle has no mobility aggregate; use 'auto'")
        od, sflows, rep = matrix_flows(matrices, ids, config.mobility_matrix, config.mobility_slice_matrix)
        if raw is not None:
            rep["unused_raw_trips"] = int(len(raw))
        if od is None:
            empty = np.zeros(0, dtype=np.int64)
            od = FlowTable(empty, empty, np.zeros(0), None, 0)
        return build_mobility(ids, flows=od, slice_flows=sflows, vectors=vectors, report=rep)

    aggs = bundle.aggregates_for(mod, "vector")
    setting = getattr(config, f"{mod}_source", "raw")
    if mod == "road":
        if raw is None:
            raise GraphError("the road modality needs a raw 'roads' layer; road aggregates are not supported yet")
        return build_road(ids_arr, _to_metric(raw, crs, "roads"), index, ctx["area"],
                          max_classes=config.max_road_classes, node_precision=config.road_node_precision,
                          betweenness_samples=config.road_betweenness_samples, seed=config.seed,
                          categories=bundle.categories.get("roads"))
    from urbanrep.graphs._features import choose_source

    source = choose_source(setting, raw is not None, aggs, mod, layer_name)
    unused = {"unused_raw_records": int(len(raw))} if (source == "aggregate" and raw is not None) else {}
    if mod == "poi":
        pois = raw if isinstance(raw, ParquetLayer) or source != "raw" else _to_metric(raw, crs, layer_name)
        res = build_poi(ids_arr, rank, config.similarity_k, pois=pois if source == "raw" else None, index=index,
                        aggregates=aggs, knn_exact_max=config.knn_exact_max, seed=config.seed,
                        crs_steps=_steps(raw, bundle, crs) if isinstance(raw, ParquetLayer) else (),
                        engine=index.engine, categories=bundle.categories.get("pois"))
        res.report.update(unused)
        if source == "raw" and aggs:
            res.report["unused_aggregates"] = [a.name for a in aggs]
        return res
    layer = _to_metric(raw, crs, layer_name) if source == "raw" else None
    if mod == "landuse":
        res = build_landuse(ids_arr, rank, config.similarity_k, landuse=layer, index=index,
                            region_area=ctx["area"], aggregates=aggs, knn_exact_max=config.knn_exact_max,
                            seed=config.seed, categories=bundle.categories.get("landuse"))
    else:
        feats = ok = None
        img_report: dict[str, Any] = {}
        if layer is not None:
            feats, ok, img_report = layer_features(layer, bundle.root, config.images, layer_name)
        res = build_remote_sensing(ids_arr, rank, config.similarity_k, tiles=layer, tile_features=feats,
                                   tile_ok=ok, index=index, aggregates=aggs,
                                   knn_exact_max=config.knn_exact_max, seed=config.seed)
        if img_report:
            res.report["images_report"] = img_report
    res.report.update(unused)
    if source == "raw" and aggs:
        res.report["unused_aggregates"] = [a.name for a in aggs]
    return res


def _steps(layer: ParquetLayer, bundle: CityBundle, metric: pyproj.CRS) -> tuple[tuple[str, str], ...]:
    """CRS transforms of a partitioned layer's points: layer → regions' CRS → metric CRS."""
    if layer.crs is None:
        return ()
    return crs_steps(layer.crs, bundle.crs, metric)


def build_graph(bundle: CityBundle, config: GraphConfig | None = None) -> tuple[HeteroData, dict[str, Any]]:
    """Build the region graph of a city bundle.

    Args:
        bundle: A validated :class:`~urbanrep.bundle.CityBundle` (``read_bundle`` validates).
        config: ETL settings (defaults: :class:`GraphConfig`).

    Returns:
        ``(data, report)``: the graph, checked with :func:`~urbanrep.graphs.schema.validate_graph`
        (region nodes in bundle order, ``N`` = number of regions), and a JSON-ready report with
        per-modality counts, masked regions, fallback neighbours, dropped records, wall and CPU
        time per stage (``timings_s``, ``cpu_s``), the process's peak RSS after each stage
        (``peak_rss_mb``) and input hashes (``inputs``).

    Raises:
        GraphError: a layer cannot be used (no CRS, bad feature vectors, a forced source that
            is absent, ...), naming the layer and the fix.
    """
    config = config or GraphConfig()
    bundle = ensure_validated(bundle)  # the checks (and messages) of urbanrep validate, once per bundle
    stages = _Stages(total=4 + len(bundle.modalities))  # regions, hashes, adjacency, modalities, validate
    report: dict[str, Any] = {"bundle": bundle.name, "schema_version": GRAPH_SCHEMA_VERSION}
    with stages("prepare_regions"):
        crs = resolve_metric_crs(bundle.regions, config.metric_crs)
        regions = bundle.regions if pyproj.CRS.from_user_input(bundle.regions.crs).equals(crs) \
            else bundle.regions.to_crs(crs)
        polys = np.asarray(regions.geometry.values, dtype=object).copy()
        ids = bundle.region_ids
        ids_arr = ids.to_numpy()
        rank = canonical_rank(ids)
        centroids = shapely.get_coordinates(shapely.centroid(polys))
        area = shapely.area(polys)
        index = RegionIndex(polys, rank, config.point_chunk)
        index.engine = engine_for(config)
    n = len(ids)
    report.update(regions=n, crs=crs.to_string(), source_crs=pyproj.CRS.from_user_input(bundle.crs).to_string())
    with stages("hash_inputs"):
        report["inputs"] = input_hashes(bundle)
    with stages("adjacency"):
        adj, report["adjacency"] = adjacency_edges(polys, centroids, rank, ids_arr, config.adjacency,
                                                   config.adjacency_tolerance, config.adjacency_fallback_k)

    data = HeteroData()
    data.schema_version = GRAPH_SCHEMA_VERSION
    data.region_ids = ids_arr.tolist()
    data.crs = crs.to_string()
    data.adjacency = config.adjacency
    reg = data[REGION]
    reg.num_nodes = n
    reg.pos = torch.from_numpy(centroids.astype(np.float32))
    _edges_to_store(data, ADJACENT, adj)

    ctx = {"ids": ids, "ids_arr": ids_arr, "rank": rank, "index": index, "crs": crs, "area": area}
    built: list[str] = []
    feature_names: dict[str, list[str]] = {}
    skipped: dict[str, str] = {}
    for mod in bundle.modalities:
        if not config.wants(mod):
            skipped[mod] = "not in GraphConfig.modalities"
            continue
        if mod == "street_view":
            with stages("street_view"):
                sv_layer = _to_metric(bundle.street_view, crs, "street_view")
                feats, ok, img_report = layer_features(sv_layer, bundle.root, config.images, "street_view")
                sv = build_street_view(sv_layer, feats, ok, index, config.image_knn_k, config.knn_exact_max,
                                       config.seed)
            data[IMAGE].num_nodes = len(sv.x)
            data[IMAGE].x = torch.from_numpy(np.ascontiguousarray(sv.x))
            data[IMAGE].pos = torch.from_numpy(np.ascontiguousarray(sv.pos))
            _edges_to_store(data, IMAGE_SPATIAL, sv.spatial)
            _edges_to_store(data, IMAGE_FEATURE, sv.feature)
            _edges_to_store(data, IMAGE_IN_REGION, sv.membership)
            report["street_view"] = {**sv.report, "images_report": img_report}
            built.append(mod)
            continue
        with stages(mod):
            res = _build_modality(mod, bundle, config, ctx)
        if res is None:
            continue
        reg[feature_key(mod)] = torch.from_numpy(np.ascontiguousarray(res.x, dtype=np.float32))
        reg[mask_key(mod)] = torch.from_numpy(np.ascontiguousarray(res.mask, dtype=bool))
        if res.edges is not None:
            _edges_to_store(data, MODALITY_EDGE[mod], res.edges)
        feature_names[mod] = res.feature_names
        report[mod] = {"features": len(res.feature_names), **res.report}
        built.append(mod)
    data.modalities = built
    data.feature_names = feature_names
    with stages("validate"):
        validate_graph(data)
    stages.bar.close()
    report["modalities"] = built
    if skipped:
        report["skipped"] = skipped
    report["dropped"] = _dropped_lines(report)
    report["timings_s"] = {**stages.times, "total": round(sum(stages.times.values()), 4)}
    report["cpu_s"] = {**stages.cpu, "total": round(sum(stages.cpu.values()), 4)}
    report["peak_rss_mb"] = stages.peak_rss_mb
    report["config"] = config.as_dict()
    for line in report["dropped"]:
        log.info("%s: %s", bundle.name, line)
    return data, report
