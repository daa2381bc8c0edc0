"""srai's embedders as peers of urbanrep, on the same bundles and regions, scored by urbanrep's harness.

srai embeds regions from OpenStreetMap features (``pip install -e ".[srai]"``: srai[torch] with
polars < 2). Its embedders that need no download at run time are run here on urbanrep's own
bundles, so that regions, features and scoring are identical:

* ``srai_count`` - ``CountEmbedder``: POIs per region and category (srai's baseline);
* ``srai_contextual_count`` - ``ContextualCountEmbedder``: the counts plus the averaged
  counts of the neighbours at distances 1 and 2 (concatenated);
* ``srai_hex2vec`` - ``Hex2VecEmbedder`` (encoder 64-32, 5 epochs of its skip-gram over the
  neighbourhood graph, srai's defaults otherwise);
* ``srai_highway2vec`` - ``Highway2VecEmbedder`` on the road segments (one-hot vocabulary class
  and log length per segment; srai's defaults) where the city has roads;
* ``raw_poi`` - urbanrep's raw-feature baseline (log counts and shares per category);
* ``urbanrep`` - urbanrep with its defaults (300 epochs) on the same modalities.

Cities (each from the data root): ``singapore`` (374 subzones, Geofabrik POIs in the
``urbanrep-osm`` vocabulary; population and land-use shares), ``helsinki_h3`` (the Helsinki
extract prepared with ``urbanrep prepare osm`` at H3 resolution 10, population moved onto the
cells by area from the HSY 250 m grid) and ``sao_paulo`` (323 H3 cells, OSM roads; population,
jobs, schools). Neighbourhoods: srai's ``H3Neighbourhood`` for H3 cells, its
``AdjacencyNeighbourhood`` for the Singapore subzones.

Scores: urbanrep's ``strict`` protocol (scaler + RidgeCV inside 5 folds, 10 shuffles), R²
mean ± std over the shuffles, averaged over training seeds for the trained embedders; land-use
shares: cosine similarity. Writes a JSON file and a markdown table::

    python -m experiments.srai_baselines --out experiments/srai_baselines.json --md experiments/SRAI_BASELINES.md
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd

from experiments.benchmark import SRAI_SECTION
from urbanrep.atomic import write_text_atomic
from urbanrep.bundle import CityBundle
from urbanrep.bundle.validate import validate_bundle
from urbanrep.datasets import resolve_data_root
from urbanrep.evaluate import EvalConfig, evaluate_embeddings
from urbanrep.evaluate.baselines import raw_modality_baseline
from urbanrep.vocabulary import load_vocabulary

log = logging.getLogger("srai_baselines")

CITIES = ("singapore", "helsinki_h3", "sao_paulo")


def load_city(name: str, root: Path) -> CityBundle:
    """A validated bundle of one benchmark city (see the module docstring)."""
    if name == "helsinki_h3":
        from urbanrep.prepare import prepare_osm

        src = root / "helsinki_osm"
        bundle = prepare_osm(src / "Helsinki.osm.pbf", "h3:10", targets=src / "helsinki_population_grid_2020.gpkg",
                             target_columns=["population"], name="helsinki_h3")
    else:
        from urbanrep.converters import get_converter

        bundle = get_converter(name)(root / name)
    return validate_bundle(bundle)[0]


def _srai_regions(bundle: CityBundle) -> gpd.GeoDataFrame:
    """Regions as srai wants them: EPSG:4326, indexed by ``region_id``."""
    return bundle.regions[["region_id", "geometry"]].to_crs(4326).set_index("region_id")


def _neighbourhood(bundle: CityBundle, regions: gpd.GeoDataFrame) -> Any:
    from srai.neighbourhoods import AdjacencyNeighbourhood, H3Neighbourhood

    ids = regions.index.astype(str)
    try:
        import h3

        if all(h3.is_valid_cell(i) for i in ids):
            return H3Neighbourhood(regions)
    except ImportError:  # pragma: no cover
        pass
    return AdjacencyNeighbourhood(regions)


def _poi_inputs(bundle: CityBundle) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame, gpd.GeoDataFrame, list[str]]:
    """``(regions, features, joint, expected columns)`` for srai's POI embedders."""
    from srai.joiners import IntersectionJoiner

    regions = _srai_regions(bundle)
    pois = bundle.pois.to_crs(4326)
    features = gpd.GeoDataFrame({"category": pois["category"].astype(str).to_numpy()},
                                geometry=pois.geometry.to_numpy(), crs=4326)
    features.index = pd.Index(np.arange(len(features)), name="feature_id")
    joint = IntersectionJoiner().transform(regions, features)
    classes = bundle.categories.get("pois") or sorted(features["category"].unique())
    return regions, features, joint, [f"category_{c}" for c in classes]


def _road_inputs(bundle: CityBundle) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame, gpd.GeoDataFrame]:
    """``(regions, features, joint)`` for Highway2Vec: one row per road segment, numeric columns."""
    from srai.joiners import IntersectionJoiner

    regions = _srai_regions(bundle)
    roads = bundle.roads
    metric = roads.to_crs(roads.estimate_utm_crs())
    classes = bundle.categories.get("roads") or sorted(roads["class"].unique())
    onehot = pd.get_dummies(pd.Categorical(roads["class"].astype(str), categories=classes)).astype(np.float32)
    onehot.columns = [f"class_{c}" for c in classes]
    onehot["log_length_m"] = np.log1p(metric.length.to_numpy()).astype(np.float32)
    features = gpd.GeoDataFrame(onehot.to_numpy(), columns=list(onehot.columns),
                                geometry=roads.to_crs(4326).geometry.to_numpy(), crs=4326)
    features.index = pd.Index(np.arange(len(features)), name="feature_id")
    joint = IntersectionJoiner().transform(regions, features)
    return regions, features, joint


def _trainer(seed: int) -> dict[str, Any]:
    import pytorch_lightning as pl

    pl.seed_everything(seed, workers=True, verbose=False)
    return {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False, "logger": False,
            "enable_checkpointing": False, "enable_model_summary": False, "deterministic": True}


def _reindex(emb: pd.DataFrame, bundle: CityBundle) -> pd.DataFrame:
    """srai's output aligned to the bundle's region order (regions without features get zeros)."""
    ids = bundle.region_ids
    out = emb.copy()
    out.index = out.index.astype(type(ids[0])) if len(out) else out.index
    out = out.reindex(ids).fillna(0.0)
    out.columns = [f"e{i:03d}" for i in range(out.shape[1])]
    out.index.name = "region_id"
    return out.astype(np.float64)


def embedders(bundle: CityBundle, epochs: int) -> dict[str, Callable[[int], pd.DataFrame]]:
    """Name -> ``fn(seed) -> embedding`` for every embedder that fits the city's layers."""
    from srai.embedders import ContextualCountEmbedder, CountEmbedder, Hex2VecEmbedder, Highway2VecEmbedder

    out: dict[str, Callable[[int], pd.DataFrame]] = {}
    if bundle.pois is not None and len(bundle.pois):
        regions, features, joint, expected = _poi_inputs(bundle)
        hood = _neighbourhood(bundle, regions)
        out["srai_count"] = lambda s: _reindex(CountEmbedder(expected).transform(regions, features, joint), bundle)
        out["srai_contextual_count"] = lambda s: _reindex(ContextualCountEmbedder(
            hood, neighbourhood_distance=2, concatenate_vectors=True, expected_output_features=expected,
            count_subcategories=True, num_of_multiprocessing_workers=1).transform(regions, features, joint), bundle)

        def hex2vec(seed: int) -> pd.DataFrame:
            emb = Hex2VecEmbedder([64, 32], expected_output_features=expected)
            return _reindex(emb.fit_transform(regions, features, joint, hood,
                                              trainer_kwargs={**_trainer(seed), "max_epochs": 5}), bundle)

        out["srai_hex2vec"] = hex2vec
        out["raw_poi"] = lambda s: raw_modality_baseline(bundle, "poi")
    if bundle.roads is not None and len(bundle.roads):
        r_regions, r_features, r_joint = _road_inputs(bundle)

        def highway2vec(seed: int) -> pd.DataFrame:
            emb = Highway2VecEmbedder()
            return _reindex(emb.fit_transform(r_regions, r_features, r_joint,
                                              trainer_kwargs={**_trainer(seed), "max_epochs": 10}), bundle)

        out["srai_highway2vec"] = highway2vec
        out["raw_road"] = lambda s: raw_modality_baseline(bundle, "road")
    out["urbanrep"] = lambda s: _urbanrep(bundle, s, epochs)
    mods = bundle.modalities
    for mod, layer in (("poi", "pois"), ("road", "roads")):
        if mod in mods and len(mods) > 1 and getattr(bundle, layer) is not None:
            out[f"urbanrep_{mod}_only"] = lambda s, m=mod: _urbanrep(bundle, s, epochs, [m])
    return out


#: What each embedding reads.
INPUTS = {"srai_count": "poi", "srai_contextual_count": "poi", "srai_hex2vec": "poi", "raw_poi": "poi",
          "srai_highway2vec": "road", "raw_road": "road", "urbanrep_poi_only": "poi", "urbanrep_road_only": "road"}


def _urbanrep(bundle: CityBundle, seed: int, epochs: int, modalities: list[str] | None = None) -> pd.DataFrame:
    import torch

    from urbanrep import UrbanRep
    from urbanrep.runconfig import load_run_config

    torch.set_num_threads(1)
    sets = [f"train.epochs={epochs}", f"train.seed={seed}", "train.num_threads=1"]
    if modalities:
        sets.append(f"graph.modalities=[{','.join(modalities)}]")
    config = load_run_config(None, sets)
    return UrbanRep(config).fit(bundle).transform(bundle)


def score(emb: pd.DataFrame, bundle: CityBundle) -> dict[str, Any]:
    m = evaluate_embeddings(emb, bundle, EvalConfig())
    out: dict[str, Any] = {t: {"r2": v["r2"], "r2_std": v.get("r2_std", 0.0)} for t, v in m["tasks"].items()}
    for group, v in (m.get("landuse") or {}).items():
        out[group] = {"cosine": v["cosine"], "l1": v["l1"]}
    return out


def run(cities: list[str], seeds: list[int], epochs: int, root: Path) -> list[dict[str, Any]]:
    rows = []
    for city in cities:
        bundle = load_city(city, root)
        log.info("%s: %s", city, bundle.summary_line())
        for name, fn in embedders(bundle, epochs).items():
            deterministic = name in ("srai_count", "srai_contextual_count", "raw_poi", "raw_road")
            per_seed, secs = [], []
            for seed in seeds[:1] if deterministic else seeds:
                t0 = time.perf_counter()
                emb = fn(seed)
                secs.append(time.perf_counter() - t0)
                per_seed.append(score(emb, bundle))
            agg: dict[str, Any] = {}
            for task in per_seed[0]:
                keys = per_seed[0][task].keys()
                agg[task] = {k: float(np.mean([p[task][k] for p in per_seed])) for k in keys}
                if "r2" in agg[task] and len(per_seed) > 1:
                    agg[task]["r2_seed_std"] = float(np.std([p[task]["r2"] for p in per_seed]))
            rows.append({"city": city, "embedding": name, "inputs": INPUTS.get(name, ",".join(bundle.modalities)),
                         "dims": int(emb.shape[1]), "seeds": len(per_seed),
                         "seconds": float(np.mean(secs)), "scores": agg})
            log.info("%s %s: %s", city, name, json.dumps(agg))
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = []
    for city in dict.fromkeys(r["city"] for r in rows):
        sub = [r for r in rows if r["city"] == city]
        tasks = list(sub[0]["scores"])
        lines += [f"**{city}** (strict; R² mean ± std over shuffles, averaged over seeds; land-use shares: cosine)", "",
                  "| embedding | inputs | dims | seeds | s / run | " + " | ".join(tasks) + " |",
                  "|---|---|---|---|---|" + "---|" * len(tasks)]
        for r in sub:
            cells = []
            for t in tasks:
                v = r["scores"].get(t, {})
                cells.append(f"{v['r2']:.3f} ± {v['r2_std']:.3f}" if "r2" in v else f"{v.get('cosine', float('nan')):.3f}")
            lines.append(f"| {r['embedding']} | {r['inputs']} | {r['dims']} | {r['seeds']} | {r['seconds']:.1f} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


#: Names in RESULTS.md's summary (the raw rows stay in SRAI_BASELINES.md only).
SUMMARY_NAMES = {"srai_count": "srai CountEmbedder", "srai_contextual_count": "srai ContextualCountEmbedder",
                 "srai_hex2vec": "srai Hex2Vec", "srai_highway2vec": "srai Highway2Vec",
                 "urbanrep_poi_only": "urbanrep (POI only)", "urbanrep_road_only": "urbanrep (roads only)",
                 "urbanrep": "urbanrep"}
#: RESULTS.md's section markers (``experiments.benchmark.KEPT_SECTIONS`` keeps it when the benchmark rewrites the file).
SECTION_START = f"{SRAI_SECTION[0]}: written by experiments/srai_baselines.py --results; benchmark --publish keeps it -->"
SECTION_END = SRAI_SECTION[1]


def results_section(rows: list[dict[str, Any]], command: str) -> str:
    """RESULTS.md's summary of the srai peers: population (strict R²) and one other task per city,
    the best embedding of each column in bold."""
    def first(scores: dict[str, Any], keys: tuple[str, ...]) -> tuple[str, float, str] | None:
        for key in keys:
            if key in scores:
                v = scores[key]
                if "r2" in v:
                    return key, v["r2"], f"{v['r2']:.3f} ± {v['r2_std']:.3f}"
                return key, v["cosine"], f"{v['cosine']:.3f}"
        return None

    lines = [SECTION_START, "## srai peers in the same harness", "",
             f"`{command}` (srai 0.10.2, `pip install -e \".[srai]\"`). `strict` R² (mean ± std over 10 shuffles, "
             "averaged over seeds 0-2 for trained embedders); land use: cosine of the predicted shares. Setup, "
             "timings and the raw rows: [SRAI_BASELINES.md](SRAI_BASELINES.md).", "",
             "| city | embedding | inputs | population | other |", "|---|---|---|---|---|"]
    for city in dict.fromkeys(r["city"] for r in rows):
        sub = [r for r in rows if r["city"] == city and r["embedding"] in SUMMARY_NAMES]
        cells = {r["embedding"]: (first(r["scores"], ("population",)),
                                  first(r["scores"], ("landuse_shares", "jobs"))) for r in sub}
        best = [max((c[i][1] for c in cells.values() if c[i] is not None), default=None) for i in (0, 1)]
        for r in sub:
            shown = []
            for i, cell in enumerate(cells[r["embedding"]]):
                if cell is None:
                    shown.append("")
                    continue
                key, value, text = cell
                text = f"**{text}**" if value == best[i] else text
                shown.append(text if i == 0 else f"{'land-use cosine' if key == 'landuse_shares' else key} {text}")
            lines.append(f"| {city} | {SUMMARY_NAMES[r['embedding']]} | {r['inputs'].replace(',', ', ')} | "
                         f"{shown[0]} | {shown[1]} |")
    lines.append(SECTION_END)
    return "\n".join(lines)


def replace_section(path: Path, section: str) -> None:
    """Put ``section`` in place of the file's srai section (appended when it has none), atomically."""
    text = path.read_text(encoding="utf-8")
    a = text.find(SRAI_SECTION[0])  # whatever the rest of an older start marker says
    b = text.find(SECTION_END, max(a, 0))
    if a >= 0 and b > a:
        text = text[:a] + section + text[b + len(SECTION_END):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    write_text_atomic(path, text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cities", nargs="+", default=list(CITIES), choices=CITIES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=300, help="urbanrep training epochs")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--out", default=None, help="JSON file for the rows")
    parser.add_argument("--md", default=None, help="markdown file for the tables")
    parser.add_argument("--results", default=None,
                        help="a RESULTS.md whose srai section is replaced by this run's summary")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    for noisy in ("pytorch_lightning", "lightning", "lightning.pytorch", "urbanrep"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    rows = run(args.cities, args.seeds, args.epochs, resolve_data_root(args.data_root))
    meta = {"vocabulary": load_vocabulary().id, "seeds": args.seeds, "urbanrep_epochs": args.epochs,
            "command": "python -m experiments.srai_baselines " + " ".join(
                f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
                for k, v in vars(args).items() if v is not None)}
    table = markdown(rows)
    print(table)
    if args.out:
        write_text_atomic(args.out, json.dumps({"meta": meta, "rows": rows}, indent=2))
    if args.md:
        write_text_atomic(args.md, f"# srai peers in urbanrep's harness\n\n`{meta['command']}`\n\n{table}")
    if args.results:
        replace_section(Path(args.results), results_section(rows, meta["command"]))


if __name__ == "__main__":
    main()
