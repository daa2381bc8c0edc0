"""urbanrep.graphs: the region-graph schema, every builder on the real data, permutation
invariance, the gap cases and determinism.

Real data: the seven converters of ``urbanrep.converters`` over the shared data root (``$URBANREP_DATA``,
default ``../shared/data``); every bundle is converted and built once per session. Expected
values are computed independently of the builders (GeoPandas ``sjoin`` / ``overlay``, networkx,
numpy on the published ``.npy`` files) so that the tests can fail.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path
from typing import Any

import geopandas as gpd
import networkx as nx
import numpy as np
import pandas as pd
import pytest
import shapely
import torch
from torch_geometric.data import HeteroData

from urbanrep.bundle import CityBundle
from urbanrep.errors import GraphError
from urbanrep.graphs import (
    ADJACENT,
    IMAGE,
    IMAGE_FEATURE,
    IMAGE_IN_REGION,
    IMAGE_SPATIAL,
    MODALITY_EDGE,
    REGION,
    GraphConfig,
    build_graph,
    feature_key,
    graph_counts,
    load_graph,
    mask_key,
    read_graph_manifest,
    save_graph,
    validate_graph,
)
from urbanrep.images import TINY_MODEL, ImageConfig, encode_images

TINY = ImageConfig(model_name=TINY_MODEL, batch_size=8, device="cpu")
CFG = GraphConfig(images=TINY)

#: Regions and modalities of each converter's bundle (from the data README).
EXPECTED: dict[str, tuple[int, list[str]]] = {
    "nyc_manhattan180": (180, ["poi", "mobility", "landuse", "remote_sensing"]),
    "chicago77": (77, ["poi", "mobility", "landuse"]),
    "nyc_tracts": (2325, ["landuse"]),
    "singapore": (374, ["poi"]),
    "helsinki_osm": (22, ["poi", "landuse", "road"]),
    "sao_paulo": (323, ["mobility", "road"]),
    "imagery_samples": (24, ["remote_sensing"]),
}


class RealData:
    """Converted bundles and their graphs, each made at most once per session."""

    def __init__(self, root: Path, nyc: CityBundle) -> None:
        self.root = root
        self._bundles: dict[str, CityBundle] = {"nyc_manhattan180": nyc}
        self._graphs: dict[str, tuple[HeteroData, dict[str, Any]]] = {}

    def bundle(self, name: str) -> CityBundle:
        if name not in self._bundles:
            from urbanrep.bundle import validate_bundle
            from urbanrep.converters import get_converter

            if not (self.root / name).is_dir():
                pytest.skip(f"data root {self.root} has no {name}/")
            self._bundles[name], _ = validate_bundle(get_converter(name)(self.root / name))
        return self._bundles[name]

    def graph(self, name: str) -> tuple[HeteroData, dict[str, Any]]:
        if name not in self._graphs:
            self._graphs[name] = build_graph(self.bundle(name), CFG)
        return self._graphs[name]


@pytest.fixture(scope="session")
def real(data_root: Path, nyc_bundle: CityBundle) -> RealData:
    return RealData(data_root, nyc_bundle)


# --------------------------------------------------------------------------- helpers


def _regions_metric(bundle: CityBundle, data: HeteroData) -> gpd.GeoDataFrame:
    return bundle.regions[["region_id", "geometry"]].to_crs(data.crs)


def _locate_lowest_id(points: gpd.GeoDataFrame, regions: gpd.GeoDataFrame) -> pd.Series:
    """Region id of each point by sjoin (a point on a shared boundary goes to the lowest id)."""
    j = gpd.sjoin(points[["geometry"]], regions, predicate="intersects", how="inner")
    return j.groupby(level=0)["region_id"].min()


def _edge_dict(data: HeteroData, et: tuple[str, str, str]) -> dict[tuple[int, int], float]:
    ei = data[et].edge_index.numpy()
    w = data[et].edge_weight.numpy()
    return dict(zip(zip(ei[0].tolist(), ei[1].tolist(), strict=True), w.tolist(), strict=True))


def _edge_set(data: HeteroData, et: tuple[str, str, str]) -> set[tuple[int, int]]:
    ei = data[et].edge_index.numpy()
    return set(zip(ei[0].tolist(), ei[1].tolist(), strict=True))


def _permuted(bundle: CityBundle, seed: int, layers: tuple[str, ...] = ()) -> tuple[CityBundle, np.ndarray, dict]:
    """The bundle with region rows, aggregate rows and ``layers`` rows shuffled.

    Returns:
        ``(bundle, perm, layer_perms)``: region ``a`` of the new bundle is region ``perm[a]`` of
        the old one; ``layer_perms[layer]`` likewise for the layer rows.
    """
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(bundle.regions))
    changes: dict[str, Any] = {"regions": bundle.regions.iloc[perm].reset_index(drop=True)}
    layer_perms = {}
    for layer in layers:
        df = getattr(bundle, layer)
        p = rng.permutation(len(df))
        layer_perms[layer] = p
        changes[layer] = df.iloc[p].reset_index(drop=True)
    changes["aggregates"] = {
        name: dataclasses.replace(agg, table=agg.table.iloc[rng.permutation(len(agg.table))].reset_index(drop=True))
        for name, agg in bundle.aggregates.items()
    }
    return dataclasses.replace(bundle, **changes), perm, layer_perms


def _sorted_edges(ei: np.ndarray, *cols: np.ndarray) -> tuple[np.ndarray, ...]:
    order = np.lexsort((ei[1], ei[0]))
    return (ei[:, order], *(c[order] for c in cols))


def assert_equivalent(g: HeteroData, h: HeteroData, perm: np.ndarray, image_perm: np.ndarray | None = None) -> None:
    """``h`` equals ``g`` up to the node permutation: node ``a`` of ``h`` is node ``perm[a]`` of ``g``."""
    assert h.region_ids == [g.region_ids[p] for p in perm]
    assert h.modalities == g.modalities and h.crs == g.crs and h.feature_names == g.feature_names
    assert set(h.edge_types) == set(g.edge_types) and set(h.node_types) == set(g.node_types)
    for key in g[REGION].keys():
        if key == "num_nodes":
            continue
        expected = g[REGION][key][torch.from_numpy(perm)]
        if expected.dtype == torch.bool:
            assert torch.equal(h[REGION][key], expected), key
        else:
            torch.testing.assert_close(h[REGION][key], expected, rtol=1e-5, atol=1e-6, msg=key)
    maps = {REGION: perm}
    if IMAGE in g.node_types:
        assert image_perm is not None
        maps[IMAGE] = image_perm
        torch.testing.assert_close(h[IMAGE].x, g[IMAGE].x[torch.from_numpy(image_perm)])
        torch.testing.assert_close(h[IMAGE].pos, g[IMAGE].pos[torch.from_numpy(image_perm)])
    for et in g.edge_types:
        gi = g[et].edge_index.numpy()
        hi = h[et].edge_index.numpy()
        hi = np.stack([maps[et[0]][hi[0]], maps[et[2]][hi[1]]])
        extra_g = [g[et].edge_weight.numpy()] + ([g[et].edge_attr.numpy()] if "edge_attr" in g[et] else [])
        extra_h = [h[et].edge_weight.numpy()] + ([h[et].edge_attr.numpy()] if "edge_attr" in h[et] else [])
        gs = _sorted_edges(gi, *extra_g)
        hs = _sorted_edges(hi, *extra_h)
        np.testing.assert_array_equal(hs[0], gs[0], err_msg=str(et))
        for a, b in zip(hs[1:], gs[1:], strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=str(et))


def assert_identical(g: HeteroData, h: HeteroData) -> None:
    """Bit-identical graphs (same node and edge order)."""
    assert_equivalent(g, h, np.arange(len(g.region_ids)),
                      np.arange(g[IMAGE].num_nodes) if IMAGE in g.node_types else None)
    for store_g, store_h in zip(g.stores, h.stores, strict=True):
        assert set(store_g.keys()) == set(store_h.keys())
        for key, value in store_g.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, store_h[key]), key
            else:
                assert value == store_h[key], key


# --------------------------------------------------------------------------- every converter


@pytest.mark.parametrize("name", list(EXPECTED))
def test_every_converter_bundle_builds(real: RealData, name: str) -> None:
    data, report = real.graph(name)
    n, modalities = EXPECTED[name]
    validate_graph(data)
    assert data[REGION].num_nodes == n and len(data.region_ids) == n
    assert data.region_ids == real.bundle(name).region_ids.tolist()
    assert data.modalities == modalities == report["modalities"]
    counts = graph_counts(data)
    expected_edges = {"__".join(ADJACENT)} | {"__".join(MODALITY_EDGE[m]) for m in modalities}
    assert set(counts["edges"]) == expected_edges
    assert all(v > 0 for v in counts["edges"].values())
    for m in modalities:
        mask = data[REGION][mask_key(m)]
        assert report[m]["masked_regions"] == int((~mask).sum()) == counts["masked_regions"][m]
        x = data[REGION][feature_key(m)]
        assert x.shape[1] == len(data.feature_names[m])
        assert (x[~mask] == 0).all() and x[mask].abs().sum(dim=1).gt(0).all()
    # No self loops; adjacency and similarity graphs are symmetric.
    for et in data.edge_types:
        ei = data[et].edge_index
        assert (ei[0] != ei[1]).all(), et
        if et != MODALITY_EDGE["mobility"]:
            assert _edge_set(data, et) == {(b, a) for a, b in _edge_set(data, et)}, et
    if name == "nyc_manhattan180":
        assert report["timings_s"]["total"] < 5.0  # the target for NYC-180


def test_nyc180_graph_variants_build_fast(real: RealData) -> None:
    """All NYC-180 graphs (aggregates, raw trips, one modality at a time) within 5 s each."""
    bundle = real.bundle("nyc_manhattan180")
    for cfg in (GraphConfig(mobility_source="raw"), GraphConfig(modalities=("mobility",)),
                GraphConfig(adjacency="rook", similarity_k=5)):
        data, report = build_graph(bundle, cfg)
        assert report["timings_s"]["total"] < 5.0
        assert "peak_rss_mb" in report and report["peak_rss_mb"]["validate"] > 0


# --------------------------------------------------------------------------- schema


def _corruptions() -> dict[str, Any]:
    def drop(attr: str):
        def f(d: HeteroData) -> None:
            del d[attr]
        return f

    def set_region(key: str, fn):
        def f(d: HeteroData) -> None:
            d[REGION][key] = fn(d[REGION][key])
        return f

    def set_edge(et, key: str, fn):
        def f(d: HeteroData) -> None:
            d[et][key] = fn(d[et][key])
        return f

    def nan_first(x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        x[0, 0] = float("nan")
        return x

    def out_of_range(ei: torch.Tensor) -> torch.Tensor:
        ei = ei.clone()
        ei[1, 0] = 180
        return ei

    def unknown_edge(d: HeteroData) -> None:
        d[REGION, "teleport", REGION].edge_index = torch.zeros((2, 1), dtype=torch.long)
        d[REGION, "teleport", REGION].edge_weight = torch.ones(1)

    def unlisted_feature(d: HeteroData) -> None:
        d[REGION][feature_key("road")] = torch.zeros((180, 3))

    def dup_ids(d: HeteroData) -> None:
        d.region_ids = [0] + d.region_ids[1:-1] + [0]

    def masked_row_nonzero(d: HeteroData) -> None:
        d[REGION][mask_key("poi")] = d[REGION][mask_key("poi")].clone()
        d[REGION][mask_key("poi")][3] = False

    def sv_without_images(d: HeteroData) -> None:
        d.modalities = [*d.modalities, "street_view"]

    poi = MODALITY_EDGE["poi"]
    mob = MODALITY_EDGE["mobility"]
    return {
        "no region_ids": drop("region_ids"),
        "no crs": drop("crs"),
        "schema version": lambda d: setattr(d, "schema_version", 99),
        "unknown modality": lambda d: setattr(d, "modalities", [*d.modalities, "weather"]),
        "duplicate region ids": dup_ids,
        "region_ids length": lambda d: setattr(d, "region_ids", d.region_ids[:-1]),
        "pos dtype": set_region("pos", lambda p: p.double()),
        "feature NaN": set_region(feature_key("poi"), nan_first),
        "feature rows": set_region(feature_key("landuse"), lambda x: x[:-1]),
        "feature dtype": set_region(feature_key("landuse"), lambda x: x.double()),
        "mask dtype": set_region(mask_key("poi"), lambda m: m.float()),
        "masked row not zero": masked_row_nonzero,
        "missing feature of listed modality": lambda d: d[REGION].__delattr__(feature_key("poi")),
        "feature of unlisted modality": unlisted_feature,
        "edge index dtype": set_edge(poi, "edge_index", lambda e: e.int()),
        "edge index out of range": set_edge(poi, "edge_index", out_of_range),
        "edge weight length": set_edge(poi, "edge_weight", lambda w: w[:-1]),
        "edge weight dtype": set_edge(poi, "edge_weight", lambda w: w.double()),
        "edge weight inf": set_edge(mob, "edge_weight", lambda w: torch.where(w > 0, torch.inf, w)),
        "edge attr rows": set_edge(mob, "edge_attr", lambda a: a[:-1]),
        "edge attr dtype": set_edge(mob, "edge_attr", lambda a: a.double()),
        "unknown edge type": unknown_edge,
        "no adjacency": lambda d: d.__delitem__(ADJACENT),
        "street view listed without images": sv_without_images,
    }


#: The start of the message each corruption must raise (the first failing check names the problem).
EXPECTED_MESSAGE = {
    "no region_ids": "graph attribute 'region_ids' is missing",
    "no crs": "graph attribute 'crs' is missing",
    "schema version": "schema_version 99",
    "unknown modality": "unknown modalities ['weather']",
    "duplicate region ids": "region_ids are not unique",
    "region_ids length": "region.num_nodes=180 but 179 region_ids",
    "pos dtype": "region.pos must be float32",
    "feature NaN": "region.x_poi has NaN/inf",
    "feature rows": "region.x_landuse must be float32 [180, F]",
    "feature dtype": "region.x_landuse must be float32 [180, F]",
    "mask dtype": "region.mask_poi must be bool",
    "masked row not zero": "region.x_poi has non-zero rows where mask_poi is False",
    "missing feature of listed modality": "modality poi is listed but region.x_poi",
    "feature of unlisted modality": "region.x_road present but road not listed",
    "edge index dtype": "('region', 'poi_similar', 'region').edge_index must be int64",
    "edge index out of range": "('region', 'poi_similar', 'region').edge_index refers to nodes outside",
    "edge weight length": "('region', 'poi_similar', 'region').edge_weight must be float32",
    "edge weight dtype": "('region', 'poi_similar', 'region').edge_weight must be float32",
    "edge weight inf": "('region', 'mobility', 'region').edge_weight has NaN/inf",
    "edge attr rows": "('region', 'mobility', 'region').edge_attr must be float32",
    "edge attr dtype": "('region', 'mobility', 'region').edge_attr must be float32",
    "unknown edge type": "unknown edge type ('region', 'teleport', 'region')",
    "no adjacency": "edge type (region, adjacent, region) is required",
    "street view listed without images": "street_view listed but node type 'image' is missing",
}


@pytest.mark.parametrize("case", list(_corruptions()))
def test_validate_graph_rejects(real: RealData, case: str) -> None:
    data = copy.copy(real.graph("nyc_manhattan180")[0])
    validate_graph(data)
    _corruptions()[case](data)
    with pytest.raises(GraphError, match="^region graph invalid: " + re.escape(EXPECTED_MESSAGE[case])):
        validate_graph(data)
    validate_graph(real.graph("nyc_manhattan180")[0])  # the shared graph was not touched


def test_validate_graph_checks_image_nodes(sv_graph: tuple) -> None:
    data = copy.copy(sv_graph[0])
    validate_graph(data)
    data[IMAGE].pos = data[IMAGE].pos.double()
    with pytest.raises(GraphError, match="image.pos"):
        validate_graph(data)
    data = copy.copy(sv_graph[0])
    ei = data[IMAGE_IN_REGION].edge_index.clone()
    ei[1, 0] = 24  # the 24 regions are 0..23
    data[IMAGE_IN_REGION].edge_index = ei
    with pytest.raises(GraphError, match="outside"):
        validate_graph(data)


def test_save_load_roundtrip_and_manifest(real: RealData, tmp_path: Path) -> None:
    data, report = real.graph("nyc_manhattan180")
    path = tmp_path / "g" / "graph.pt"
    path.parent.mkdir()
    mpath = save_graph(data, report, path)
    loaded = load_graph(path)
    assert_identical(data, loaded)
    manifest = read_graph_manifest(path)
    assert mpath == tmp_path / "g" / "graph.json"
    assert manifest["schema_version"] == data.schema_version
    assert manifest["counts"] == graph_counts(data)
    assert manifest["inputs"]["combined"] == report["inputs"]["combined"]
    assert manifest["counts"]["nodes"]["region"] == 180


def test_writer_and_reader_validate(real: RealData, tmp_path: Path) -> None:
    data, report = real.graph("nyc_manhattan180")
    bad = copy.copy(data)
    bad.schema_version = 99
    with pytest.raises(GraphError, match="schema_version"):
        save_graph(bad, report, tmp_path / "bad.pt")
    assert not (tmp_path / "bad.pt").exists()
    torch.save(bad, tmp_path / "offschema.pt")  # written around save_graph, as a legacy pickle
    with pytest.raises(GraphError, match="trust-legacy-pickle"):
        load_graph(tmp_path / "offschema.pt")
    with pytest.raises(GraphError, match="schema_version"):
        load_graph(tmp_path / "offschema.pt", trust_legacy_pickle=True)
    (tmp_path / "corrupt.pt").write_bytes(b"not a torch file")
    with pytest.raises(GraphError, match="not a region graph file"):
        load_graph(tmp_path / "corrupt.pt")
    torch.save({"a": torch.zeros(1)}, tmp_path / "dict.pt")
    with pytest.raises(GraphError, match="not a region graph"):
        load_graph(tmp_path / "dict.pt", trust_legacy_pickle=True)
    with pytest.raises(GraphError, match="does not exist"):
        load_graph(tmp_path / "missing.pt")


# --------------------------------------------------------------------------- adjacency


def test_adjacency_matches_sjoin_nyc(real: RealData) -> None:
    bundle = real.bundle("nyc_manhattan180")
    data, report = real.graph("nyc_manhattan180")
    regions = _regions_metric(bundle, data)
    j = gpd.sjoin(regions, regions, predicate="intersects")
    pairs = {(int(a), int(b)) for a, b in zip(j.index, j["index_right"], strict=True) if a != b}
    touch_line = {(a, b) for a, b in pairs
                  if regions.geometry.iloc[a].intersection(regions.geometry.iloc[b]).length > 0}
    assert data.adjacency == "rook" and _edge_set(data, ADJACENT) == touch_line  # the default: a shared stretch
    assert report["adjacency"]["isolated_regions"] == 0 and report["adjacency"]["fallback_pairs"] == 0
    assert (data[ADJACENT].edge_weight == 1).all()
    queen, _ = build_graph(bundle, GraphConfig(adjacency="queen", modalities=()))
    assert queen.adjacency == "queen" and _edge_set(queen, ADJACENT) == pairs and len(touch_line) < len(pairs)


def test_adjacency_island_fallback_nyc_tracts(real: RealData) -> None:
    """Tracts without a touching neighbour get their 3 nearest centroids, both ways, and are reported."""
    bundle = real.bundle("nyc_tracts")
    data, report = real.graph("nyc_tracts")
    regions = _regions_metric(bundle, data)
    j = gpd.sjoin(regions, regions, predicate="intersects")
    touching = j.index[j.index != j["index_right"]]
    isolated = np.setdiff1d(np.arange(len(regions)), np.unique(touching))
    rep = report["adjacency"]
    assert rep["isolated_regions"] == len(isolated) == 4
    assert sorted(rep["isolated_region_ids"]) == sorted(regions["region_id"].iloc[isolated].tolist())
    assert rep["fallback_pairs"] == 3 * len(isolated)
    assert any("without a neighbour" in line for line in report["dropped"])
    cen = shapely.get_coordinates(regions.geometry.centroid.values)
    edges = _edge_set(data, ADJACENT)
    for r in isolated:
        d = np.linalg.norm(cen - cen[r], axis=1)
        d[r] = np.inf
        for nb in np.argsort(d, kind="stable")[:3]:
            assert (int(r), int(nb)) in edges and (int(nb), int(r)) in edges
    deg = np.bincount(data[ADJACENT].edge_index[0].numpy(), minlength=len(regions))
    assert (deg > 0).all()
    # With the fallback off the islands stay isolated (and are still reported).
    off, rep_off = build_graph(bundle, GraphConfig(adjacency_fallback_k=0, modalities=()))
    deg_off = np.bincount(off[ADJACENT].edge_index[0].numpy(), minlength=len(regions))
    assert (deg_off[isolated] == 0).all() and rep_off["adjacency"]["isolated_regions"] == 4


def test_adjacency_every_tile_is_an_island(real: RealData) -> None:
    """The 24 tile footprints (0.5 % short of their neighbours) touch nothing: all get the fallback."""
    data, report = real.graph("imagery_samples")
    assert report["adjacency"]["isolated_regions"] == 24
    assert report["adjacency"]["boundary_pairs"] == 0
    out_deg = np.bincount(data[ADJACENT].edge_index[0].numpy(), minlength=24)
    assert (out_deg >= 3).all()
    # A 100 m tolerance bridges the few-metre gaps between the tiles of a column; Shenzhen's column
    # skips two tiles (y = 2531, 2532), so its last tile stays an island.
    tol, rep = build_graph(real.bundle("imagery_samples"), GraphConfig(adjacency_tolerance=100, modalities=()))
    assert rep["adjacency"]["isolated_region_ids"] == ["Shenzhen/16_12368_2533"]
    city = [rid.split("/")[0] for rid in tol.region_ids]
    assert all(city[a] == city[b] for a, b in _edge_set(tol, ADJACENT))


# --------------------------------------------------------------------------- POI


def test_poi_raw_counts_match_sjoin_singapore(real: RealData) -> None:
    bundle = real.bundle("singapore")
    data, report = real.graph("singapore")
    regions = _regions_metric(bundle, data)
    pois = bundle.pois.to_crs(data.crs)
    region_of = _locate_lowest_id(pois, regions)
    cats = list(bundle.categories["pois"])  # the vocabulary's fixed columns, present in the city or not
    assert set(pois["category"]) < set(cats)
    expected = (pd.crosstab(region_of, pois.loc[region_of.index, "category"].astype(str))
                .reindex(index=bundle.region_ids, columns=cats, fill_value=0).to_numpy(dtype=float))
    c = len(cats)
    assert data.feature_names["poi"][:c] == [f"log1p:{k}" for k in cats]
    x = data[REGION][feature_key("poi")].numpy()
    assert x.shape == (374, 2 * c + 1)
    np.testing.assert_allclose(np.expm1(x[:, :c].astype(np.float64)), expected, rtol=1e-5, atol=1e-4)
    total = expected.sum(axis=1)
    shares = np.divide(expected, total[:, None], out=np.zeros_like(expected), where=total[:, None] > 0)
    np.testing.assert_allclose(x[:, c:2 * c], shares, atol=1e-6)
    rep = report["poi"]
    assert rep["source"] == "raw" and rep["points"] == len(pois) == 4347 - 39  # 39 towers the vocabulary leaves out
    assert rep["outside_regions"] == len(pois) - len(region_of) == 16  # 17 before, one of them a tower
    assert rep["assigned"] == int(total.sum())
    # Regions without any POI are masked, not zero-filled data.
    assert rep["masked_regions"] == int((total == 0).sum()) == 103  # 3 subzones hold only towers
    np.testing.assert_array_equal(data[REGION][mask_key("poi")].numpy(), total > 0)


def _check_cosine_knn(counts: np.ndarray, mask: np.ndarray, data: HeteroData, et, k: int) -> None:
    """Every used region's k most cosine-similar regions are its neighbours; weights are cosines."""
    use = np.flatnonzero(mask & (np.linalg.norm(counts, axis=1) > 0))
    unit = counts[use] / np.linalg.norm(counts[use], axis=1, keepdims=True)
    sim = unit @ unit.T
    np.fill_diagonal(sim, -np.inf)
    edges = _edge_dict(data, et)
    src = data[et].edge_index[0].numpy()
    assert set(src.tolist()) <= set(use.tolist())
    kk = min(k, len(use) - 1)
    for a in range(len(use)):
        order = np.argsort(-sim[a], kind="stable")
        kth = sim[a, order[kk - 1]]
        sure = order[sim[a, order] > kth + 1e-6]  # strictly above the k-th value: no tie ambiguity
        for b in sure:
            assert (int(use[a]), int(use[b])) in edges
        nbrs = [b for (s, b) in edges if s == use[a]]
        assert len(nbrs) >= kk
    # Weight = cosine similarity, symmetric.
    pos = {int(r): i for i, r in enumerate(use)}
    full = unit @ unit.T
    for (a, b), w in edges.items():
        assert w == pytest.approx(full[pos[a], pos[b]], abs=1e-5)
        assert edges[(b, a)] == w


def test_poi_similarity_graph_singapore(real: RealData) -> None:
    data, _ = real.graph("singapore")
    x = data[REGION][feature_key("poi")].numpy().astype(np.float64)
    c = (x.shape[1] - 1) // 2
    counts = np.rint(np.expm1(x[:, :c]))
    _check_cosine_knn(counts, data[REGION][mask_key("poi")].numpy(), data, MODALITY_EDGE["poi"], CFG.similarity_k)


def test_poi_aggregate_nyc(real: RealData, data_root: Path) -> None:
    data, report = real.graph("nyc_manhattan180")
    counts = np.load(data_root / "nyc_manhattan180" / "features" / "hafusion_poi_dist.npy")
    x = data[REGION][feature_key("poi")].numpy()
    assert x.shape == (180, 2 * 26 + 1)
    np.testing.assert_allclose(np.expm1(x[:, :26].astype(np.float64)), counts, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.expm1(x[:, -1].astype(np.float64)), counts.sum(axis=1), rtol=1e-5)
    assert report["poi"]["source"] == "aggregate" and report["poi"]["masked_regions"] == 0
    _check_cosine_knn(counts, np.ones(180, bool), data, MODALITY_EDGE["poi"], CFG.similarity_k)


# --------------------------------------------------------------------------- mobility


def test_mobility_aggregate_nyc(real: RealData, data_root: Path) -> None:
    data, report = real.graph("nyc_manhattan180")
    feat = data_root / "nyc_manhattan180" / "features"
    od = np.load(feat / "mob_label.npy").astype(np.float64)
    slices = np.load(feat / "mob_patterns.npy").astype(np.float64)
    off = od.copy()
    np.fill_diagonal(off, 0)
    et = MODALITY_EDGE["mobility"]
    src, dst = np.nonzero(off)
    ei = data[et].edge_index.numpy()
    assert set(zip(ei[0].tolist(), ei[1].tolist(), strict=True)) == set(zip(src.tolist(), dst.tolist(), strict=True))
    np.testing.assert_allclose(data[et].edge_weight.numpy(), od[ei[0], ei[1]], rtol=1e-6)
    attr = data[et].edge_attr.numpy()
    assert attr.shape == (ei.shape[1], 7)
    np.testing.assert_allclose(attr, slices[:, ei[0], ei[1]].T, rtol=1e-6)
    x = data[REGION][feature_key("mobility")].numpy().astype(np.float64)
    names = data.feature_names["mobility"]
    np.testing.assert_allclose(np.expm1(x[:, names.index("log1p:out_flow")]), off.sum(axis=1), rtol=1e-5)
    np.testing.assert_allclose(np.expm1(x[:, names.index("log1p:in_flow")]), off.sum(axis=0), rtol=1e-5)
    np.testing.assert_allclose(np.expm1(x[:, names.index("log1p:intra_flow")]), np.diag(od), rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(np.expm1(x[:, names.index("log1p:out_flow_s3")]), slices[3].sum(axis=1), rtol=1e-5)
    hourly = np.load(feat / "gurpp_flow_in_per_hour.npy")
    np.testing.assert_allclose(np.expm1(x[:, names.index("log1p:flow_per_hour:in_h07")]), hourly[:, 7], rtol=1e-5)
    rep = report["mobility"]
    assert rep["matrix"] == "od_trips" and rep["slice_matrix"] == "od_trips_by_slice"
    assert rep["unused_raw_trips"] == 800
    in_slices_only = (slices.sum(axis=0) > 0) & (od == 0)
    np.fill_diagonal(in_slices_only, False)
    assert rep["slice_pairs_not_in_od"] == int(in_slices_only.sum())


def test_mobility_raw_trips_nyc(real: RealData) -> None:
    """The 800 real TLC trips: OD by sjoin of both ends, time slices by pickup hour."""
    bundle = real.bundle("nyc_manhattan180")
    data, report = build_graph(bundle, GraphConfig(mobility_source="raw", modalities=("mobility",)))
    regions = _regions_metric(bundle, data)
    trips = bundle.trips
    o = _locate_lowest_id(gpd.GeoDataFrame(geometry=trips["origin"].to_crs(data.crs)), regions)
    d = _locate_lowest_id(gpd.GeoDataFrame(geometry=trips["destination"].to_crs(data.crs)), regions)
    both = o.index.intersection(d.index)
    when = pd.to_datetime(trips.loc[both, "time"])
    hours = when.dt.hour + when.dt.minute / 60 + when.dt.second / 3600
    t = pd.DataFrame({"o": o[both], "d": d[both], "s": np.floor(hours * 7 / 24).astype(int)})
    cross = t[t.o != t.d]
    expected = cross.groupby(["o", "d"]).size()
    got = _edge_dict(data, MODALITY_EDGE["mobility"])
    assert got == {(int(a), int(b)): float(v) for (a, b), v in expected.items()}
    rep = report["mobility"]
    assert rep["source"] == "raw" and rep["trips"] == 800
    assert rep["dropped_trips"] == 800 - len(both) and rep["dropped_trips"] > 0
    assert rep["unused_aggregates"]
    attr = data[MODALITY_EDGE["mobility"]].edge_attr.numpy()
    ei = data[MODALITY_EDGE["mobility"]].edge_index.numpy()
    by_slice = cross.groupby(["o", "d", "s"]).size()
    want = np.zeros_like(attr)
    lookup = {(a, b): i for i, (a, b) in enumerate(zip(ei[0].tolist(), ei[1].tolist(), strict=True))}
    for (a, b, s), v in by_slice.items():
        want[lookup[(a, b)], s] = v
    np.testing.assert_array_equal(attr, want)
    x = data[REGION][feature_key("mobility")].numpy().astype(np.float64)
    names = data.feature_names["mobility"]
    out = cross.groupby("o").size().reindex(range(180), fill_value=0).to_numpy()
    intra = t[t.o == t.d].groupby("o").size().reindex(range(180), fill_value=0).to_numpy()
    np.testing.assert_allclose(np.expm1(x[:, names.index("log1p:out_flow")]), out, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.expm1(x[:, names.index("log1p:intra_flow")]), intra, rtol=1e-5, atol=1e-4)
    touched = np.zeros(180, bool)
    touched[t.o.to_numpy()] = True
    touched[t.d.to_numpy()] = True
    np.testing.assert_array_equal(data[REGION][mask_key("mobility")].numpy(), touched)
    assert report["mobility"]["masked_regions"] == int((~touched).sum()) > 0


def test_mobility_raw_transit_sao_paulo(real: RealData) -> None:
    """GTFS legs with counts: edge weights are summed run counts of legs between two hexagons."""
    bundle = real.bundle("sao_paulo")
    data, report = real.graph("sao_paulo")
    regions = _regions_metric(bundle, data)
    trips = bundle.trips
    o = _locate_lowest_id(gpd.GeoDataFrame(geometry=trips["origin"].to_crs(data.crs)), regions)
    d = _locate_lowest_id(gpd.GeoDataFrame(geometry=trips["destination"].to_crs(data.crs)), regions)
    both = o.index.intersection(d.index)
    pos = pd.Series(np.arange(len(regions)), index=regions["region_id"])
    t = pd.DataFrame({"o": pos[o[both]].to_numpy(), "d": pos[d[both]].to_numpy(),
                      "w": trips.loc[both, "count"].to_numpy(dtype=float)})
    cross = t[t.o != t.d].groupby(["o", "d"])["w"].sum()
    got = _edge_dict(data, MODALITY_EDGE["mobility"])
    assert got == {(int(a), int(b)): pytest.approx(v) for (a, b), v in cross.items()}
    assert report["mobility"]["dropped_trips"] == len(trips) - len(both)
    touched = np.zeros(len(regions), bool)
    touched[t.o] = touched[t.d] = True
    assert report["mobility"]["masked_regions"] == int((~touched).sum())


# --------------------------------------------------------------------------- land use


def test_landuse_raw_overlay_helsinki(real: RealData) -> None:
    bundle = real.bundle("helsinki_osm")
    data, report = real.graph("helsinki_osm")
    regions = _regions_metric(bundle, data)
    lu = bundle.landuse[["class", "geometry"]].to_crs(data.crs)
    ov = gpd.overlay(lu, regions, how="intersection", keep_geom_type=True)
    ov["area"] = ov.area
    classes = list(bundle.categories["landuse"])  # the vocabulary's fixed columns
    area = ov.pivot_table(index="region_id", columns="class", values="area", aggfunc="sum").reindex(
        index=bundle.region_ids, columns=classes, fill_value=0).fillna(0).to_numpy()
    total = area.sum(axis=1)
    x = data[REGION][feature_key("landuse")].numpy()
    names = data.feature_names["landuse"]
    assert names[:len(classes)] == [f"share:{c}" for c in classes]
    np.testing.assert_allclose(x[:, :len(classes)], area / total[:, None], atol=1e-5)
    np.testing.assert_allclose(np.expm1(x[:, names.index("log1p:area_ha")].astype(np.float64)), total / 1e4,
                               rtol=1e-4)
    cover = np.clip(total / regions.area.to_numpy(), 0, 1)
    np.testing.assert_allclose(x[:, names.index("coverage")], cover, atol=1e-5)
    touched = set(gpd.sjoin(lu, regions, predicate="intersects").index)
    assert report["landuse"]["outside_regions"] == len(lu) - len(touched)
    _check_cosine_knn(area, total > 0, data, MODALITY_EDGE["landuse"], CFG.similarity_k)


def test_landuse_aggregate_nyc(real: RealData, data_root: Path) -> None:
    data, report = real.graph("nyc_manhattan180")
    counts = np.load(data_root / "nyc_manhattan180" / "features" / "hafusion_landUse_dist.npy")
    x = data[REGION][feature_key("landuse")].numpy()
    assert x.shape == (180, 12)
    np.testing.assert_allclose(x[:, :11], counts / counts.sum(axis=1, keepdims=True), atol=1e-6)
    np.testing.assert_allclose(np.expm1(x[:, 11].astype(np.float64)), counts.sum(axis=1), rtol=1e-5)
    assert report["landuse"]["source"] == "aggregate"


def test_landuse_aggregate_shares_nyc_tracts(real: RealData) -> None:
    """The 4 tracts without a land-use row are masked (not zeros pretending to be data)."""
    bundle = real.bundle("nyc_tracts")
    data, report = real.graph("nyc_tracts")
    agg = bundle.aggregates_for("landuse", "vector")[0]
    table = agg.table.set_index("region_id").reindex(bundle.region_ids)[agg.value_columns()]
    no_row = table.isna().all(axis=1).to_numpy()
    empty = no_row | (table.fillna(0).sum(axis=1).to_numpy() == 0)
    assert report["landuse"]["regions_without_row"] == int(no_row.sum()) == 4
    assert report["landuse"]["masked_regions"] == int(empty.sum()) == 4
    assert sorted(report["landuse"]["masked_region_ids"]) == sorted(bundle.region_ids[empty].tolist())
    np.testing.assert_array_equal(data[REGION][mask_key("landuse")].numpy(), ~empty)


# --------------------------------------------------------------------------- roads


def _road_truth(bundle: CityBundle, data: HeteroData, precision: float = 0.01):
    """Independent road measures: overlay lengths, a networkx graph of the line vertices, sjoin."""
    regions = _regions_metric(bundle, data)
    roads = bundle.roads[["class", "geometry"]].to_crs(data.crs).explode(index_parts=False)
    ov = gpd.overlay(roads.reset_index(drop=True), regions, how="intersection", keep_geom_type=True)
    length = ov.assign(km=ov.length / 1e3).groupby("region_id")["km"].sum().reindex(
        bundle.region_ids, fill_value=0).to_numpy()
    g = nx.Graph()
    for line in roads.geometry.values:
        q = [tuple(v) for v in np.round(shapely.get_coordinates(line) / precision).astype(np.int64).tolist()]
        g.add_edges_from((a, b) for a, b in zip(q[:-1], q[1:], strict=True) if a != b)
    nodes = list(g.nodes)
    xy = np.array(nodes, dtype=np.float64) / (1.0 / precision)
    pts = gpd.GeoDataFrame(geometry=gpd.points_from_xy(xy[:, 0], xy[:, 1]), crs=data.crs)
    where = _locate_lowest_id(pts, regions)
    pos = pd.Series(np.arange(len(regions)), index=regions["region_id"])
    node_region = np.full(len(nodes), -1)
    node_region[where.index.to_numpy()] = pos[where.to_numpy()].to_numpy()
    deg = np.array([g.degree(v) for v in nodes])
    return regions, length, g, nodes, node_region, deg


@pytest.mark.parametrize("name", ["helsinki_osm", "sao_paulo"])
def test_road_features_and_connectivity(real: RealData, name: str) -> None:
    bundle = real.bundle(name)
    data, report = real.graph(name)
    regions, length_km, g, nodes, node_region, deg = _road_truth(bundle, data)
    n = len(regions)
    km2 = regions.area.to_numpy() / 1e6
    x = data[REGION][feature_key("road")].numpy().astype(np.float64)
    names = data.feature_names["road"]
    np.testing.assert_allclose(np.expm1(x[:, names.index("log1p:km_per_km2:total")]) * km2, length_km,
                               rtol=1e-4, atol=1e-6)
    ok = node_region >= 0
    inter = np.bincount(node_region[ok], weights=(deg[ok] >= 3), minlength=n)
    dead = np.bincount(node_region[ok], weights=(deg[ok] == 1), minlength=n)
    np.testing.assert_allclose(np.expm1(x[:, names.index("log1p:intersections_per_km2")]) * km2, inter, atol=1e-3)
    np.testing.assert_allclose(np.expm1(x[:, names.index("log1p:dead_ends_per_km2")]) * km2, dead, atol=1e-3)
    rep = report["road"]
    assert rep["nodes"] == g.number_of_nodes() and rep["segments"] == g.number_of_edges()
    assert rep["nodes_outside_regions"] == int((~ok).sum()) and rep["intersections"] == int(inter.sum())
    # Connectivity: road segments whose two ends lie in two different regions, both directions.
    index = {v: i for i, v in enumerate(nodes)}
    pairs: dict[tuple[int, int], float] = {}
    for a, b in g.edges:
        ra, rb = node_region[index[a]], node_region[index[b]]
        if ra >= 0 and rb >= 0 and ra != rb:
            for key in ((int(ra), int(rb)), (int(rb), int(ra))):
                pairs[key] = pairs.get(key, 0.0) + 1.0
    assert _edge_dict(data, MODALITY_EDGE["road"]) == pairs
    # Regions joined by a road segment touch (at a corner at least: queen adjacency) or are one region apart.
    adj = _edge_set(build_graph(bundle, GraphConfig(adjacency="queen", modalities=()))[0], ADJACENT)
    assert sum(p in adj for p in pairs) / len(pairs) > 0.95
    mask = data[REGION][mask_key("road")].numpy()
    np.testing.assert_array_equal(mask, length_km > 0)


def test_road_betweenness_is_seeded(real: RealData) -> None:
    bundle = real.bundle("helsinki_osm")
    cfg = GraphConfig(modalities=("road",), road_betweenness_samples=50, seed=3)
    a, rep = build_graph(bundle, cfg)
    b, _ = build_graph(bundle, cfg)
    assert a.feature_names["road"][-1] == "mean_betweenness" and rep["road"]["betweenness_samples"] == 50
    assert torch.equal(a[REGION][feature_key("road")], b[REGION][feature_key("road")])
    assert a[REGION][feature_key("road")][:, -1].max() > 0


# --------------------------------------------------------------------------- remote sensing


def test_remote_sensing_precomputed_nyc(real: RealData, data_root: Path) -> None:
    data, report = real.graph("nyc_manhattan180")
    feats = np.load(data_root / "nyc_manhattan180" / "features" / "gurpp_region_si_img.npy")
    np.testing.assert_array_equal(data[REGION][feature_key("remote_sensing")].numpy(), feats.astype(np.float32))
    assert report["remote_sensing"]["source"] == "aggregate" and report["remote_sensing"]["dim"] == 512
    _check_cosine_knn(feats.astype(np.float64), np.ones(180, bool), data, MODALITY_EDGE["remote_sensing"],
                      CFG.similarity_k)


@pytest.fixture(scope="session")
def tile_features(real: RealData) -> np.ndarray:
    """Tiny-CLIP features of the 24 real tiles, encoded directly (not through the graph)."""
    rs = real.bundle("imagery_samples").remote_sensing
    res = encode_images(rs["image_path"].tolist(), TINY)
    assert res.ok.all()
    return np.asarray(res.features, dtype=np.float32)


def test_remote_sensing_real_tiles_through_clip(real: RealData, tile_features: np.ndarray) -> None:
    """Raw tiles -> open_clip features -> per-region area-weighted mean (each region is one tile)."""
    data, report = real.graph("imagery_samples")
    x = data[REGION][feature_key("remote_sensing")].numpy()
    np.testing.assert_allclose(x, tile_features, rtol=1e-5, atol=1e-6)
    rep = report["remote_sensing"]
    assert rep["source"] == "raw" and rep["tiles"] == 24 and rep["unusable_tiles"] == 0
    assert rep["images_report"]["features_from"].startswith("open_clip")
    assert rep["masked_regions"] == 0


def test_remote_sensing_area_weighting() -> None:
    """A region covered by two tile footprints gets their area-weighted mean; an uncovered one is masked."""
    from conftest import grid_bundle

    base = grid_bundle(2)
    tiles = gpd.GeoDataFrame(
        {"feature": [np.array([1.0, 0.0]), np.array([0.0, 1.0]), None, np.array([5.0, 5.0])]},
        geometry=[shapely.box(0, 0, 750, 1000), shapely.box(750, 0, 2000, 1000),
                  shapely.box(0, 1000, 1000, 2000), shapely.box(5000, 5000, 6000, 6000)], crs=base.regions.crs)
    bundle = dataclasses.replace(base, pois=None, aggregates={}, remote_sensing=tiles)
    data, report = build_graph(bundle, GraphConfig())
    x = data[REGION][feature_key("remote_sensing")].numpy()
    np.testing.assert_allclose(x[0], [0.75, 0.25])  # r0 = [0,1000]^2: 3/4 of tile 0, 1/4 of tile 1
    np.testing.assert_allclose(x[1], [0.0, 1.0])
    np.testing.assert_array_equal(data[REGION][mask_key("remote_sensing")].numpy(), [True, True, False, False])
    rep = report["remote_sensing"]
    assert rep["unusable_tiles"] == 1 and rep["tiles_outside_regions"] == 1 and rep["masked_regions"] == 2


# --------------------------------------------------------------------------- street view


def _street_view_bundle(real: RealData, tmp: Path) -> CityBundle:
    """Real images as street-view points: each tile's centre, 3 points far outside, 1 unreadable file."""
    base = real.bundle("imagery_samples")
    rs = base.remote_sensing
    centres = rs.geometry.to_crs(3857).centroid.to_crs(rs.crs).values
    far = gpd.GeoSeries(shapely.affinity.translate(g, 0.5, 0.5) for g in centres[:3]).values
    broken = tmp / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    paths = rs["image_path"].tolist() + rs["image_path"].tolist()[:3] + [str(broken)]
    geoms = list(centres) + list(far) + [centres[5]]
    sv = gpd.GeoDataFrame({"image_path": paths}, geometry=geoms, crs=rs.crs)
    return dataclasses.replace(base, remote_sensing=None, street_view=sv, name="imagery_street_view")


@pytest.fixture(scope="session")
def sv_bundle(real: RealData, tmp_path_factory: pytest.TempPathFactory) -> CityBundle:
    return _street_view_bundle(real, tmp_path_factory.mktemp("sv"))


@pytest.fixture(scope="session")
def sv_graph(sv_bundle: CityBundle) -> tuple[HeteroData, dict[str, Any]]:
    return build_graph(sv_bundle, GraphConfig(images=TINY, image_knn_k=4))


def test_street_view_nodes_and_edges(sv_bundle: CityBundle, sv_graph: tuple, tile_features: np.ndarray) -> None:
    data, report = sv_graph
    assert data.modalities == ["street_view"] and IMAGE in data.node_types
    rep = report["street_view"]
    assert rep["images"] == 28 and rep["dropped_unusable"] == 1 and rep["nodes"] == 27
    assert rep["outside_regions"] == 3 and rep["regions_with_images"] == 24
    assert rep["images_report"]["unreadable_images"] == 1
    assert any("street_view: 3 records outside every region" in line for line in report["dropped"])
    x = data[IMAGE].x.numpy()
    np.testing.assert_allclose(x[:24], tile_features, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(x[24:27], tile_features[:3], rtol=1e-5, atol=1e-6)
    # Membership: image i (a tile centre) lies in region i; the 3 far points have no region.
    mem = data[IMAGE_IN_REGION].edge_index.numpy()
    np.testing.assert_array_equal(mem, np.stack([np.arange(24), np.arange(24)]))
    # Spatial kNN: every image's 4 nearest images (metric CRS) are neighbours, weight exp(-d / median).
    kept = sv_bundle.street_view.iloc[:27].to_crs(data.crs)
    pos = shapely.get_coordinates(kept.geometry.values)
    np.testing.assert_allclose(data[IMAGE].pos.numpy(), pos, atol=1.0)  # float32 metres
    d = np.linalg.norm(pos[:, None] - pos[None], axis=2)
    np.fill_diagonal(d, np.inf)
    sp_edges = _edge_dict(data, IMAGE_SPATIAL)
    for a in range(27):
        for b in np.argsort(d[a], kind="stable")[:4]:
            assert (a, int(b)) in sp_edges
    dist = np.array([d[a, b] for a, b in sp_edges])
    w = np.array(list(sp_edges.values()))
    np.testing.assert_allclose(w, np.exp(-dist / np.median(dist[dist > 0])), rtol=1e-5, atol=1e-7)
    # Feature kNN on cosine similarity (3 images repeat a tile: their twin is the nearest).
    _check_cosine_knn(x.astype(np.float64), np.ones(27, bool), data, IMAGE_FEATURE, 4)
    for i in range(3):
        assert (i, 24 + i) in _edge_set(data, IMAGE_FEATURE)
    # Region level: adjacency of the regions the images pool into.
    assert data[REGION].num_nodes == 24 and ADJACENT in data.edge_types
    assert not any(feature_key(m) in data[REGION] for m in ("poi", "road"))


def test_street_view_precomputed_features_and_permutation(sv_bundle: CityBundle, sv_graph: tuple) -> None:
    """Features given as a column give the same graph; shuffling images and regions permutes it."""
    g, _ = sv_graph
    sv = sv_bundle.street_view
    keep = np.r_[0:27]  # drop the unreadable image: it has no features to give
    feats = list(g[IMAGE].x.numpy())
    pre = gpd.GeoDataFrame({"feature": feats}, geometry=sv.geometry.values[keep], crs=sv.crs)
    bundle = dataclasses.replace(sv_bundle, street_view=pre)
    cfg = GraphConfig(image_knn_k=4)
    base, _ = build_graph(bundle, cfg)
    for key in ("x", "pos"):
        assert torch.equal(base[IMAGE][key], g[IMAGE][key])
    for et in (IMAGE_SPATIAL, IMAGE_FEATURE, IMAGE_IN_REGION, ADJACENT):
        assert torch.equal(base[et].edge_index, g[et].edge_index)
    shuffled, perm, lperm = _permuted(bundle, seed=7, layers=("street_view",))
    h, _ = build_graph(shuffled, cfg)
    assert_equivalent(base, h, perm, lperm["street_view"])


# --------------------------------------------------------------------------- permutation invariance


PERMUTED_LAYERS = {
    "nyc_manhattan180": ("trips",),
    "chicago77": (),
    "nyc_tracts": (),
    "singapore": ("pois",),
    "helsinki_osm": ("pois", "landuse", "roads"),
    "sao_paulo": ("trips", "roads"),
}


@pytest.mark.parametrize("name", list(PERMUTED_LAYERS))
def test_permutation_invariance(real: RealData, name: str) -> None:
    """Shuffling region rows, aggregate rows and raw-layer rows permutes the graph and changes nothing else."""
    g, _ = real.graph(name)
    bundle, perm, _ = _permuted(real.bundle(name), seed=11, layers=PERMUTED_LAYERS[name])
    h, _ = build_graph(bundle, CFG)
    assert_equivalent(g, h, perm)
    if name == "nyc_manhattan180":  # the raw-trip path too
        cfg = GraphConfig(mobility_source="raw", modalities=("mobility",))
        assert_equivalent(build_graph(real.bundle(name), cfg)[0], build_graph(bundle, cfg)[0], perm)


def test_permutation_invariance_tiles(real: RealData, tile_features: np.ndarray) -> None:
    g, _ = real.graph("imagery_samples")
    base = real.bundle("imagery_samples")
    rs = base.remote_sensing.drop(columns="image_path").assign(feature=list(tile_features))
    bundle = dataclasses.replace(base, remote_sensing=rs)
    assert_equivalent(g, build_graph(bundle, CFG)[0], np.arange(24))
    shuffled, perm, _ = _permuted(bundle, seed=5, layers=("remote_sensing",))
    assert_equivalent(g, build_graph(shuffled, CFG)[0], perm)


def test_permutation_invariance_synthetic_ties() -> None:
    """A square grid (many exact distance ties, points on shared edges and corners) with every layer."""
    from experiments.synthetic_city import SyntheticCityConfig, make_city

    city = make_city(SyntheticCityConfig(num_regions=64, num_pois=3000, num_trips=3000, num_landuse=80,
                                         road_spacing=150, num_street_view=300, remote_sensing_tiles=6,
                                         tessellation="square", seed=2))
    # Snap points to a 50 m lattice: many lie on region edges and corners and share locations.
    snap = {}
    for layer in ("pois", "street_view"):
        df = getattr(city, layer)
        xy = np.round(shapely.get_coordinates(df.geometry.values) / 50) * 50
        snap[layer] = df.set_geometry(gpd.points_from_xy(xy[:, 0], xy[:, 1]), crs=df.crs)
    city = dataclasses.replace(city, **snap)
    cfg = GraphConfig(image_knn_k=5, similarity_k=4)
    g, rep = build_graph(city, cfg)
    assert g.modalities == ["poi", "mobility", "landuse", "road", "remote_sensing", "street_view"]
    for seed in (1, 2):
        bundle, perm, lperm = _permuted(city, seed, layers=("pois", "trips", "landuse", "roads", "remote_sensing",
                                                             "street_view"))
        h, _ = build_graph(bundle, cfg)
        assert_equivalent(g, h, perm, lperm["street_view"])


# --------------------------------------------------------------------------- gaps and determinism


def test_missing_aggregate_rows_are_masked(real: RealData) -> None:
    bundle = real.bundle("nyc_manhattan180")
    agg = bundle.aggregates["poi_counts"]
    drop = [3, 50, 177]
    cut = dataclasses.replace(agg, table=agg.table[~agg.table["region_id"].isin(drop)])
    data, report = build_graph(dataclasses.replace(bundle, trips=None, aggregates={"poi_counts": cut}),
                               GraphConfig())
    mask = data[REGION][mask_key("poi")].numpy()
    assert np.flatnonzero(~mask).tolist() == drop
    assert (data[REGION][feature_key("poi")][drop] == 0).all()
    assert report["poi"]["regions_without_row"] == 3 and report["poi"]["masked_region_ids"] == drop
    assert not set(drop) & set(data[MODALITY_EDGE["poi"]].edge_index.flatten().tolist())
    assert data.modalities == ["poi"]  # the bundle's other modalities were removed with their aggregates


def test_absent_modality_is_absent(real: RealData) -> None:
    data, report = real.graph("chicago77")
    for m in ("road", "remote_sensing"):
        assert feature_key(m) not in data[REGION] and mask_key(m) not in data[REGION]
        assert MODALITY_EDGE[m] not in data.edge_types
    assert IMAGE not in data.node_types and "street_view" not in data.modalities
    sub, rep = build_graph(real.bundle("nyc_manhattan180"), GraphConfig(modalities=("poi",)))
    assert sub.modalities == ["poi"] and set(sub.edge_types) == {ADJACENT, MODALITY_EDGE["poi"]}
    assert set(rep["skipped"]) == {"mobility", "landuse", "remote_sensing"}
    with pytest.raises(GraphError, match="poi_source='raw'"):
        build_graph(real.bundle("nyc_manhattan180"), GraphConfig(poi_source="raw"))
    with pytest.raises(GraphError, match="road"):
        validate_graph(_with(sub, "modalities", ["poi", "road"]))


def _with(data: HeteroData, key: str, value: Any) -> HeteroData:
    out = copy.copy(data)
    setattr(out, key, value)
    return out


@pytest.mark.parametrize("name", ["nyc_manhattan180", "helsinki_osm", "sao_paulo"])
def test_same_inputs_identical_graph(real: RealData, name: str) -> None:
    g, rep = real.graph(name)
    h, rep2 = build_graph(real.bundle(name), CFG)
    assert_identical(g, h)
    assert rep["inputs"] == rep2["inputs"]


def test_same_inputs_identical_graph_from_disk(real: RealData, nyc_bundle_dir: Path) -> None:
    """A bundle read back from its folder hashes and builds exactly like the in-memory one."""
    from urbanrep.bundle import read_bundle

    g, rep = real.graph("nyc_manhattan180")
    h, rep2 = build_graph(read_bundle(nyc_bundle_dir), CFG)
    assert rep2["inputs"]["combined"] == rep["inputs"]["combined"]
    assert_identical(g, h)


def test_grid_bundle_adjacency_and_poi_counts() -> None:
    """The 4 x 4 fixture grid: rook (and queen) adjacency of a grid, POI counts per cell by coordinates."""
    from conftest import grid_bundle

    bundle = grid_bundle(4)
    data, report = build_graph(bundle, GraphConfig())
    assert data[ADJACENT].edge_index.size(1) == 2 * (2 * 4 * 3)  # the default, rook: side pairs, both ways
    queen, _ = build_graph(bundle, GraphConfig(adjacency="queen", modalities=()))
    assert queen[ADJACENT].edge_index.size(1) == 2 * (2 * 4 * 3 + 2 * 3 * 3)  # queen: + diagonal pairs
    xy = shapely.get_coordinates(bundle.pois.geometry.values)
    cell = (xy[:, 1] // 1000).astype(int) * 4 + (xy[:, 0] // 1000).astype(int)
    total = np.bincount(cell, minlength=16)
    np.testing.assert_allclose(np.expm1(data[REGION][feature_key("poi")][:, -1].double().numpy()), total, rtol=1e-5)
    assert report["mobility"]["od_pairs"] == 15


# --------------------------------------------------------------------------- approximate similarity kNN


def test_approx_knn_pairs_recall_and_shape() -> None:
    """Above ``knn_exact_max`` rows: k distinct non-self neighbours per row, high recall, row-order free."""
    from urbanrep.graphs._spatial import knn_pairs
    from urbanrep.graphs.similarity import approx_knn_pairs

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 16))
    x = centres[rng.integers(0, 40, 3000)] + 0.4 * rng.normal(size=(3000, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    rank = rng.permutation(3000)
    r, c, d = approx_knn_pairs(x, 10, rank, decimals=7)
    assert len(r) == 30000 and (r != c).all()
    assert (np.bincount(r, minlength=3000) == 10).all()
    assert len(np.unique(r * 3000 + c)) == 30000
    np.testing.assert_allclose(d, np.linalg.norm(x[r] - x[c], axis=1), atol=1e-5)  # float32
    er, ec, _ = knn_pairs(x, 10, rank, decimals=7)
    recall = len(set(zip(r.tolist(), c.tolist(), strict=True)) & set(zip(er.tolist(), ec.tolist(), strict=True))) / len(er)
    assert recall > 0.95
    perm = rng.permutation(3000)  # row a of the shuffled input is row perm[a]
    pr, pc, _ = approx_knn_pairs(x[perm], 10, rank[perm], decimals=7)
    assert set(zip(perm[pr].tolist(), perm[pc].tolist(), strict=True)) == set(zip(r.tolist(), c.tolist(), strict=True))


def test_approximate_similarity_graph_on_real_pois(real: RealData) -> None:
    bundle = real.bundle("singapore")
    exact, _ = real.graph("singapore")
    cfg = GraphConfig(knn_exact_max=50)
    approx, rep = build_graph(bundle, cfg)
    assert rep["poi"]["similarity"]["exact"] is False and rep["poi"]["similarity"]["nodes"] == 271
    et = MODALITY_EDGE["poi"]
    want, got = _edge_dict(exact, et), _edge_dict(approx, et)
    assert len(want.keys() & got.keys()) / len(want) > 0.9
    assert all(got[e] == pytest.approx(want[e], abs=1e-6) for e in want.keys() & got.keys())
    shuffled, perm, _ = _permuted(bundle, seed=3, layers=("pois",))
    assert_equivalent(approx, build_graph(shuffled, cfg)[0], perm)


# --------------------------------------------------------------------------- small helpers


def test_time_slice_bins() -> None:
    from urbanrep.graphs.mobility import time_slice

    t = pd.Series(["2015-07-01 00:00:00", "2015-07-01 03:25:42", "2015-07-01 03:25:43", None,
                   "2015-07-01 23:59:59", "1969-12-31 12:00:00"])
    # 24 h / 7 = 3 h 25 m 42.857 s: 03:25:42 is still slice 0, 03:25:43 slice 1.
    assert time_slice(t, 7).tolist() == [0, 0, 1, -1, 6, 3]
    aware = pd.Series(pd.to_datetime(["2015-07-01 08:30"]).tz_localize("America/New_York"))
    assert time_slice(aware, 24).tolist() == [8]  # local wall-clock hour, not UTC


def test_category_codes_sorted_and_merged() -> None:
    from urbanrep.graphs._features import category_codes

    codes, names = category_codes(pd.Series(["shop", 1, None, "1", "food", np.nan, "shop"], dtype=object), "t")
    assert names == ["1", "food", "shop"]
    assert codes.tolist() == [2, 0, -1, 0, 1, -1, 2]
    with pytest.raises(GraphError, match="every value is missing"):
        category_codes(pd.Series([None, None], dtype=object), "layer 'pois' column 'category'")


def test_region_index_locate_edge_cases() -> None:
    """Missing and empty points are outside; a point on a shared edge goes to the lowest-ranked region."""
    from urbanrep.graphs._spatial import RegionIndex

    boxes = np.array([shapely.box(0, 0, 1, 1), shapely.box(1, 0, 2, 1), shapely.box(5, 5, 6, 6)], dtype=object)
    pts = np.array([shapely.Point(0.5, 0.5), None, shapely.Point(1, 0.5), shapely.Point(3, 3), shapely.Point(),
                    shapely.Point(5.5, 5.5), shapely.Point(1, 1)], dtype=object)
    assert RegionIndex(boxes, np.array([1, 0, 2]), chunk=2).locate(pts).tolist() == [0, -1, 1, -1, -1, 2, 1]
    assert RegionIndex(boxes, np.array([0, 1, 2])).locate(pts).tolist() == [0, -1, 0, -1, -1, 2, 0]


def test_rook_tolerance_bridges_gaps_not_corners() -> None:
    """Four 100 m squares 1 m apart: a 2 m tolerance links the side pairs under rook, every pair under queen."""
    from urbanrep.graphs.adjacency import adjacency_edges

    squares = np.array([shapely.box(x * 101.0, y * 101.0, x * 101.0 + 100.0, y * 101.0 + 100.0)
                        for y in range(2) for x in range(2)])
    cen = shapely.get_coordinates(shapely.centroid(squares))
    rank, ids = np.arange(4), np.array(["a", "b", "c", "d"])

    def pairs(contiguity: str, tol: float) -> set[tuple[int, int]]:
        edges, rep = adjacency_edges(squares, cen, rank, ids, contiguity, tol, fallback_k=0)
        got = {(int(s), int(d)) for s, d in edges.index.T if s < d}
        assert rep["tolerance_pairs"] == rep["boundary_pairs"] == len(got)  # every pair is a bridged gap
        return got

    assert pairs("rook", 0.0) == pairs("queen", 0.0) == set()  # 1 m gaps: nothing touches
    sides = {(0, 1), (2, 3), (0, 2), (1, 3)}
    assert pairs("rook", 2.0) == sides  # the diagonal pairs (0, 3), (1, 2) meet only near a corner
    assert pairs("queen", 2.0) == sides | {(0, 3), (1, 2)}
