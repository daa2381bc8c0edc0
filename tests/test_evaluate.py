"""Downstream evaluation: cross-checks on real NYC-180 data, leakage guards, land-use shares, baselines.

Cross-check figures come from ``../shared/data/README.md`` ("Measured on this data"), computed
there independently of this code.
"""

from __future__ import annotations

import builtins
import json
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
from scipy.optimize import check_grad
from scipy.special import log_softmax
from shapely.geometry import LineString, box
from sklearn.linear_model import RidgeCV
from sklearn.preprocessing import StandardScaler

import urbanrep.evaluate.protocols as protocols_mod
import urbanrep.evaluate.regression as regression_mod
import urbanrep.evaluate.repeats as repeats_mod
from tests.conftest import grid_bundle
from urbanrep.bundle import CityBundle, validate_bundle
from urbanrep.errors import ConfigError
from urbanrep.evaluate import (
    EvalConfig,
    EvaluationError,
    available_baselines,
    baseline_embedding,
    distribution_scores,
    evaluate_embeddings,
    format_markdown,
    modality_features,
    oof_predictions,
    published_embedding,
    raw_feature_baseline,
    raw_modality_baseline,
    run_evaluation,
    write_report,
)
from urbanrep.evaluate.protocols import outer_splits, spatial_groups
from urbanrep.evaluate.softmax import SoftmaxRegression

TOL = 0.005
LU = [f"land_use_{i}" for i in range(5)]


def only_targets(bundle: CityBundle, names: list[str], labels: bool = True) -> CityBundle:
    """The bundle with a subset of its targets (keeps tests fast)."""
    t = bundle.targets
    return replace(bundle, targets=t[t["target"].isin(names)].reset_index(drop=True),
                   labels=bundle.labels if labels else None)


@pytest.fixture(scope="module")
def gurpp(data_root: Path) -> pd.DataFrame:
    return published_embedding(data_root, "gurpp")


@pytest.fixture(scope="module")
def singapore(data_root: Path) -> CityBundle:
    """Real Singapore subzones (374, EPSG:3414) with raw OSM POIs, population and 5-class land-use shares."""
    src = data_root / "singapore"
    if not src.is_dir():
        pytest.skip(f"{src} not present")
    zones = gpd.read_file(src / "converted_singapore_subzones_374.gpkg")
    pois = gpd.read_file(src / "converted_singapore_poi_4347.gpkg")
    ids = np.array([f"sz{i:03d}" for i in range(len(zones))])
    pop = zones["population"].to_numpy(dtype=np.float64)
    has_pop = np.isfinite(pop)
    targets = [pd.DataFrame({"region_id": ids[has_pop], "target": "population", "value": pop[has_pop]})]
    targets += [pd.DataFrame({"region_id": ids, "target": c, "value": zones[c].to_numpy(np.float64)}) for c in LU]
    bundle = CityBundle(
        name="singapore", regions=gpd.GeoDataFrame({"region_id": ids}, geometry=zones.geometry.values, crs=zones.crs),
        pois=gpd.GeoDataFrame({"category": pois["fclass"]}, geometry=pois.geometry.values, crs=pois.crs),
        targets=pd.concat(targets, ignore_index=True), target_groups={"landuse_shares": LU})
    return validate_bundle(bundle)[0]


# ---------------------------------------------------------------- cross-checks on real NYC-180


def test_paper_crosscheck_gurpp(nyc_bundle: CityBundle, gurpp: pd.DataFrame) -> None:
    b = only_targets(nyc_bundle, ["check_in", "crime", "service_call"])
    rep = evaluate_embeddings(gurpp, b, EvalConfig(protocol="paper"))
    assert rep["protocol"] == "paper"
    assert rep["tasks"]["check_in"]["r2"] == pytest.approx(0.800, abs=TOL)
    assert rep["tasks"]["crime"]["r2"] == pytest.approx(0.577, abs=TOL)
    assert rep["tasks"]["service_call"]["r2"] == pytest.approx(0.357, abs=TOL)
    assert rep["tasks"]["check_in"]["r2_std"] == 0.0 and rep["tasks"]["check_in"]["repeats"] == 1
    # mh_cd.json holds 13 values, one on a single region: KMeans(12) as published
    assert rep["clustering"]["by_label"]["community_district"]["n_clusters"] == 12
    assert rep["clustering"]["nmi"] == pytest.approx(0.484, abs=TOL)
    assert rep["n_regions"] == {"total": 180, "check_in": 180, "crime": 180, "service_call": 180,
                                "community_district": 180}


def test_paper_crosscheck_raw_counts(nyc_bundle: CityBundle) -> None:
    b = only_targets(nyc_bundle, ["check_in", "crime"])
    poi = raw_modality_baseline(b, "poi", log1p=False)
    landuse = raw_modality_baseline(b, "landuse", log1p=False)
    assert poi.shape == (180, 26) and landuse.shape == (180, 11)
    rep_poi = evaluate_embeddings(poi, b, EvalConfig(protocol="paper"))
    rep_lu = evaluate_embeddings(landuse, b, EvalConfig(protocol="paper"))
    assert rep_poi["tasks"]["check_in"]["r2"] == pytest.approx(0.764, abs=TOL)
    assert rep_poi["tasks"]["crime"]["r2"] == pytest.approx(0.463, abs=TOL)
    assert rep_poi["clustering"]["nmi"] == pytest.approx(0.257, abs=TOL)
    assert rep_lu["tasks"]["check_in"]["r2"] == pytest.approx(0.697, abs=TOL)
    assert rep_lu["tasks"]["crime"]["r2"] == pytest.approx(0.519, abs=TOL)


def test_strict_crosscheck_gurpp(nyc_bundle: CityBundle, gurpp: pd.DataFrame) -> None:
    b = only_targets(nyc_bundle, ["check_in", "crime", "service_call"], labels=False)
    fixed = evaluate_embeddings(gurpp, b, EvalConfig(ridge_alpha=1.0))
    assert fixed["tasks"]["check_in"]["repeats"] == 10
    assert fixed["tasks"]["check_in"]["r2"] == pytest.approx(0.788, abs=TOL)
    assert fixed["tasks"]["check_in"]["r2_std"] == pytest.approx(0.027, abs=TOL)
    assert fixed["tasks"]["crime"]["r2"] == pytest.approx(0.558, abs=TOL)
    cv = evaluate_embeddings(gurpp, b, EvalConfig())  # alpha by inner CV on the training fold
    assert cv["tasks"]["check_in"]["r2"] == pytest.approx(0.779, abs=TOL)
    assert cv["tasks"]["crime"]["r2"] == pytest.approx(0.544, abs=TOL)
    assert cv["tasks"]["service_call"]["r2"] == pytest.approx(0.347, abs=TOL)
    for m in cv["tasks"].values():
        assert m["mae_std"] > 0 and m["rmse_std"] > 0 and m["rmse"] >= m["mae"] > 0


def test_strict_probe_does_not_scale_up_rounding_noise(nyc_bundle: CityBundle, gurpp: pd.DataFrame) -> None:
    """A column non-zero in one region and rounding noise elsewhere leaves the strict R² sane."""
    b = only_targets(nyc_bundle, ["check_in"], labels=False)
    config = EvalConfig(seeds=(0, 1))
    base = evaluate_embeddings(gurpp, b, config)["tasks"]["check_in"]["r2"]
    emb = gurpp.copy()
    spike = np.random.default_rng(0).normal(0.0, 1e-14, len(emb))
    spike[7] = 20.0  # e.g. an eigenvector of a one-region graph component
    emb["spike"] = spike
    got = evaluate_embeddings(emb, b, config)["tasks"]["check_in"]["r2"]
    assert got == pytest.approx(base, abs=0.02)
    # a plain StandardScaler fit without that region puts it ~1e14 standard deviations out
    train = np.delete(emb.to_numpy(), 7, axis=0)
    assert abs(StandardScaler().fit(train).transform(emb.to_numpy()[7:8])[0, -1]) > 1e12
    fold = protocols_mod.FoldScaler().fit(train)
    assert abs(fold.transform(emb.to_numpy()[7:8])[0, -1]) == pytest.approx(20.0, abs=1e-6)
    assert np.allclose(fold.transform(train)[:, :-1], StandardScaler().fit_transform(train)[:, :-1])


# ---------------------------------------------------------------- leakage guards

_EVENTS: list[tuple[str, frozenset[int], frozenset[int]]] = []
_ACTIVE_TEST: list[frozenset[int]] = []


class SpyScaler(protocols_mod.FoldScaler):
    """Records the row ids (column 0 of the raw embedding) it is fit on and applied to."""

    def fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> SpyScaler:  # noqa: N803
        if np.asarray(X).shape[1] == 1:  # the MLP's target scaler (fit on y_train): no row ids to read
            return super().fit(X, y, sample_weight)
        _EVENTS.append(("fit", frozenset(np.asarray(X)[:, 0].astype(int).tolist()), _ACTIVE_TEST[-1]))
        return super().fit(X, y, sample_weight)

    def fit_transform(self, X: Any, y: Any = None, **kw: Any) -> Any:  # noqa: N803
        self.fit(X, y)
        return super().transform(X)

    def transform(self, X: Any, copy: Any = None) -> Any:  # noqa: N803
        if np.asarray(X).shape[1] == 1:
            return super().transform(X, copy)
        _EVENTS.append(("apply", frozenset(np.asarray(X)[:, 0].astype(int).tolist()), _ACTIVE_TEST[-1]))
        return super().transform(X, copy)


def spy_on_scalers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every scaler the probes build (the embedding's and the MLP target's) records its rows."""
    monkeypatch.setattr(protocols_mod, "FoldScaler", SpyScaler)
    monkeypatch.setattr(protocols_mod, "StandardScaler", SpyScaler)


class SpyRidgeCV(RidgeCV):
    """Records the rows (identified by their unique target value) its alpha search sees."""

    y_to_id: dict[float, int] = {}

    def fit(self, X: Any, y: Any, sample_weight: Any = None, **kw: Any) -> SpyRidgeCV:  # noqa: N803
        ids = frozenset(SpyRidgeCV.y_to_id[float(v)] for v in np.asarray(y))
        _EVENTS.append(("alpha", ids, _ACTIVE_TEST[-1]))
        return super().fit(X, y, sample_weight=sample_weight, **kw)


def _tracking_splits(n: int, config: EvalConfig, seed: int, groups: Any = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``outer_splits`` that publishes the test fold (as row ids) while its fold is fit."""
    for train, test in outer_splits(n, config, seed, groups):
        _ACTIVE_TEST.append(frozenset(test.tolist()))
        yield train, test
    _ACTIVE_TEST.append(frozenset())


def test_strict_fits_scalers_alphas_on_training_rows_only(nyc_bundle: CityBundle, gurpp: pd.DataFrame,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # row id i (bundle position) in column 0 of the embedding, a unique target value per row
    emb = gurpp.copy()
    emb.insert(0, "row", np.arange(180, dtype=np.float64))
    y = nyc_bundle.target_table()["check_in"].to_numpy() + np.arange(180) * 1e-3
    lu = nyc_bundle.aggregates["landuse_counts"].table
    shares = lu.drop(columns="region_id").to_numpy(np.float64)[:60]  # land-use shares on 60 regions
    targets = [pd.DataFrame({"region_id": range(180), "target": "y", "value": y})]
    targets += [pd.DataFrame({"region_id": range(60), "target": f"lu{j}", "value": shares[:, j]}) for j in range(11)]
    b = replace(nyc_bundle, targets=pd.concat(targets, ignore_index=True), labels=None,
                target_groups={"shares": [f"lu{j}" for j in range(11)]})
    SpyRidgeCV.y_to_id = {float(v): i for i, v in enumerate(y)}
    _EVENTS.clear()
    _ACTIVE_TEST[:] = [frozenset()]
    spy_on_scalers(monkeypatch)
    monkeypatch.setattr(protocols_mod, "RidgeCV", SpyRidgeCV)
    monkeypatch.setattr(repeats_mod, "outer_splits", _tracking_splits)  # every probe's folds (scalar, shares)
    res = run_evaluation(emb, b, EvalConfig(seeds=(0, 1)))

    fits = [e for e in _EVENTS if e[0] == "fit"]
    alphas = [e for e in _EVENTS if e[0] == "alpha"]
    applies = [e for e in _EVENTS if e[0] == "apply"]
    assert len(alphas) == 2 * 5  # one ridge alpha search per outer fold, scalar task
    assert len(fits) > 2 * 5 * 2  # + the softmax probe's scalers inside its inner CV
    for kind, ids, test in fits + alphas:
        assert test, f"{kind} outside an outer fold"
        assert not ids & test, f"{kind} saw {len(ids & test)} test-fold rows"
    for _, ids, test in alphas:
        assert len(ids) == 180 - len(test)
    # the spy identifies rows correctly: every outer test fold is scaled with its training scaler
    assert sum(ids == test for _, ids, test in applies) == 2 * 5 * 2
    # each repeat predicts every region exactly once
    assert res.metrics["tasks"]["y"]["repeats"] == 2
    assert len(res.predictions.query("target == 'y'")) == 180


def test_paper_uses_raw_embedding_and_clips(nyc_bundle: CityBundle, gurpp: pd.DataFrame,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    _EVENTS.clear()
    _ACTIVE_TEST[:] = [frozenset()]
    spy_on_scalers(monkeypatch)
    b = only_targets(nyc_bundle, ["service_call", "carbon"], labels=False)
    res = run_evaluation(gurpp, b, EvalConfig(protocol="paper"))
    assert _EVENTS == []  # Ridge(alpha=1) on the raw embedding: no scaler
    pred = res.predictions
    assert (pred["predicted"] >= 0).all()
    raw = run_evaluation(gurpp, b, EvalConfig(protocol="paper", clip_negative=False)).predictions
    assert (raw["predicted"] < 0).any()  # clipping is not vacuous here


def test_baselines_ignore_targets(nyc_bundle: CityBundle) -> None:
    rng = np.random.default_rng(0)
    t = nyc_bundle.targets.copy()
    t["value"] = rng.permutation(t["value"].to_numpy()) * 3.0 + 1.0
    lab = nyc_bundle.labels.copy()
    lab["value"] = rng.permutation(lab["value"].to_numpy())
    other = replace(nyc_bundle, targets=t, labels=lab)
    for name in ("raw_all", "raw_poi", "raw_mobility", "raw_remote_sensing"):
        pd.testing.assert_frame_equal(baseline_embedding(name, nyc_bundle), baseline_embedding(name, other))
    no_targets = replace(nyc_bundle, targets=None, labels=None)
    pd.testing.assert_frame_equal(raw_feature_baseline(nyc_bundle), raw_feature_baseline(no_targets))


def _forbid_reading(monkeypatch: pytest.MonkeyPatch, leaky: str) -> list[str]:
    """Make ``np.load`` and ``open`` fail on any path containing ``leaky``; returns the np.load paths seen."""
    seen: list[str] = []
    real_load, real_open = np.load, builtins.open

    def guarded_load(file: Any, *a: Any, **k: Any) -> Any:
        seen.append(str(file))
        assert leaky not in str(file), f"read the target-derived {file}"
        return real_load(file, *a, **k)

    def guarded_open(file: Any, *a: Any, **k: Any) -> Any:
        assert leaky not in str(file), f"opened the target-derived {file}"
        return real_open(file, *a, **k)

    monkeypatch.setattr(np, "load", guarded_load)
    monkeypatch.setattr(builtins, "open", guarded_open)
    return seen


def test_checkin_similarity_never_read(data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from urbanrep.converters import get_converter

    leaky = "hrep_checkin_similarity"
    assert (data_root / "nyc_manhattan180" / "features" / f"{leaky}.npy").exists()  # the guard is not vacuous
    seen = _forbid_reading(monkeypatch, leaky)
    bundle = get_converter("nyc_manhattan180")(data_root / "nyc_manhattan180")
    for name in available_baselines(bundle):
        baseline_embedding(name, bundle)
    raw_feature_baseline(bundle, mobility="shares")
    published_embedding(data_root, "gurpp")
    assert any("gurpp_emb" in s for s in seen) and any("hafusion_poi_dist" in s for s in seen)


def _tiny_train(bundle: CityBundle, epochs: int = 2) -> tuple[Any, np.ndarray]:
    """Graph and embedding of a tiny, seeded CPU training run on ``bundle``."""
    import torch

    from urbanrep.experts.base import ExpertConfig
    from urbanrep.graphs import GraphConfig, build_graph
    from urbanrep.network import ModelConfig
    from urbanrep.train import TrainConfig, train

    torch.set_num_threads(1)
    data, _ = build_graph(bundle, GraphConfig())
    mc = ModelConfig(expert=ExpertConfig(hidden_channels=16, out_channels=16, heads=2), projection_channels=16)
    res = train(data, mc, TrainConfig(epochs=epochs, seed=0, device="cpu"), run_dir=None)
    return data, res.embeddings


def test_training_never_sees_targets_or_labels(nyc_bundle: CityBundle) -> None:
    """Graph and trained embedding are identical whether targets/labels are real, scrambled or absent."""
    rng = np.random.default_rng(1)
    t = nyc_bundle.targets.copy()
    t["value"] = rng.permutation(t["value"].to_numpy()) * 7.0 + 3.0
    lab = nyc_bundle.labels.copy()
    lab["value"] = rng.permutation(lab["value"].to_numpy())
    data_a, emb_a = _tiny_train(nyc_bundle)
    for other in (replace(nyc_bundle, targets=t, labels=lab), replace(nyc_bundle, targets=None, labels=None)):
        data_b, emb_b = _tiny_train(other)
        assert data_a.node_types == data_b.node_types and data_a.edge_types == data_b.edge_types
        for store_a, store_b in zip(data_a.stores, data_b.stores, strict=True):
            assert sorted(store_a.keys()) == sorted(store_b.keys())
            for key, val in store_a.items():
                if hasattr(val, "numpy"):
                    np.testing.assert_array_equal(val.numpy(), store_b[key].numpy(), err_msg=key)
        np.testing.assert_array_equal(emb_a, emb_b)
    # no region-level input column reproduces a target (up to scale): nothing target-derived is a feature
    y = nyc_bundle.target_table().to_numpy(np.float64)
    region = data_a["region"]
    for key, val in region.items():
        if not hasattr(val, "dim") or val.dim() != 2 or val.size(0) != y.shape[0]:
            continue
        x = val.double().numpy()
        x = x[:, x.std(axis=0) > 0]
        if x.shape[1] == 0:
            continue
        corr = np.corrcoef(np.hstack([x, y]), rowvar=False)[: x.shape[1], x.shape[1]:]
        assert np.nanmax(np.abs(corr)) < 0.99, f"graph feature {key} reproduces a target"


def test_checkin_similarity_never_reaches_training(data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Converting NYC-180, building its graph and training never read the check-in-derived matrix."""
    from urbanrep.converters import get_converter

    leaky = "hrep_checkin_similarity"
    _forbid_reading(monkeypatch, leaky)
    bundle = get_converter("nyc_manhattan180")(data_root / "nyc_manhattan180")
    names = " ".join([*bundle.aggregates, *(str(v) for v in vars(bundle).values() if isinstance(v, str | Path))])
    assert "checkin" not in names.lower().replace("_", "").replace("-", "")
    data, emb = _tiny_train(bundle, epochs=1)
    assert emb.shape[0] == 180 and np.isfinite(emb).all()
    with pytest.raises(AssertionError, match="target-derived"):  # the guard is live
        np.load(data_root / "nyc_manhattan180" / "features" / f"{leaky}.npy")


def test_strict_lasso_and_mlp_fit_on_training_rows_only(nyc_bundle: CityBundle, gurpp: pd.DataFrame,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Every scaler of the strict lasso and MLP probes is fit on training-fold rows only."""
    emb = gurpp.iloc[:, :20].copy()
    emb.insert(0, "row", np.arange(180, dtype=np.float64))
    b = only_targets(nyc_bundle, ["crime"], labels=False)
    _EVENTS.clear()
    _ACTIVE_TEST[:] = [frozenset()]
    spy_on_scalers(monkeypatch)
    monkeypatch.setattr(repeats_mod, "outer_splits", _tracking_splits)
    run_evaluation(emb, b, EvalConfig(seeds=(0,), regressors=("lasso", "mlp"), mlp_max_iter=50))
    fits = [e for e in _EVENTS if e[0] == "fit"]
    assert len(fits) >= 5 * 2
    for _, ids, test in fits:
        assert test and not ids & test


# ---------------------------------------------------------------- harness behaviour


def test_alignment_by_region_id(nyc_bundle: CityBundle, gurpp: pd.DataFrame) -> None:
    b = only_targets(nyc_bundle, ["crime"], labels=False)
    cfg = EvalConfig(protocol="paper")
    base = evaluate_embeddings(gurpp, b, cfg)
    shuffled = gurpp.sample(frac=1.0, random_state=0)
    assert evaluate_embeddings(shuffled, b, cfg)["tasks"] == base["tasks"]
    as_column = shuffled.reset_index()  # region_id as a column works too
    assert evaluate_embeddings(as_column, b, cfg)["tasks"] == base["tasks"]
    with pytest.raises(EvaluationError, match="lacks 1 of the bundle's 180 regions"):
        evaluate_embeddings(gurpp.drop(index=7), b, cfg)
    with pytest.raises(EvaluationError, match="lacks 180"):
        evaluate_embeddings(gurpp.set_axis(gurpp.index.astype(str)), b, cfg)
    bad = gurpp.copy()
    bad.iloc[3, 2] = np.nan
    with pytest.raises(EvaluationError, match="NaN or inf"):
        evaluate_embeddings(bad, b, cfg)


def test_oof_predictions_match_report(nyc_bundle: CityBundle, gurpp: pd.DataFrame) -> None:
    from sklearn.metrics import r2_score

    b = only_targets(nyc_bundle, ["check_in", "income"], labels=False)
    cfg = EvalConfig(protocol="paper")
    pred = oof_predictions(gurpp, b, cfg)
    rep = evaluate_embeddings(gurpp, b, cfg)
    assert list(pred.columns) == ["region_id", "target", "group", "probe", "observed", "predicted", "predicted_std"]
    for target, df in pred.groupby("target"):
        assert df["region_id"].tolist() == list(range(180))
        assert r2_score(df["observed"], df["predicted"]) == pytest.approx(rep["tasks"][target]["r2"], abs=1e-12)
        np.testing.assert_array_equal(df["observed"], b.target_table()[target].to_numpy())


def test_other_probes(nyc_bundle: CityBundle, gurpp: pd.DataFrame) -> None:
    b = only_targets(nyc_bundle, ["check_in"], labels=False)
    cfg = EvalConfig(regressors=("ridge", "lasso", "rf", "mlp"), seeds=(0,), rf_trees=30)
    rep = evaluate_embeddings(gurpp, b, cfg)
    assert set(rep["probes"]) == {"ridge", "lasso", "rf", "mlp"}
    assert rep["tasks"]["check_in"] == rep["probes"]["ridge"]["check_in"]
    for name, tasks in rep["probes"].items():
        assert tasks["check_in"]["r2"] > 0.4, name


def test_spatial_blocks_keep_blocks_whole(nyc_bundle: CityBundle, gurpp: pd.DataFrame) -> None:
    from urbanrep.evaluate.harness import region_centroids

    cents = region_centroids(nyc_bundle)
    assert np.ptp(cents[:, 1]) > 10_000  # metres: Manhattan is ~20 km long
    cfg = EvalConfig(spatial_blocks=15, seeds=(0, 1))
    for seed in cfg.seeds:
        groups = spatial_groups(cents, 15, seed)
        folds = outer_splits(180, cfg, seed, groups)
        assert sorted(np.concatenate([te for _, te in folds]).tolist()) == list(range(180))
        for train, test in folds:
            assert not set(groups[train]) & set(groups[test])
    b = only_targets(nyc_bundle, ["check_in"], labels=False)
    rep = evaluate_embeddings(gurpp, b, cfg)
    assert rep["config"]["spatial_blocks"] == 15 and rep["tasks"]["check_in"]["repeats"] == 2
    with pytest.raises(ConfigError, match="fewer than folds"):
        EvalConfig(spatial_blocks=3)


def test_spatial_blocks_choose_the_penalty_by_blocks_too() -> None:
    """Under spatial-block folds every inner search (ridge alpha, lasso, softmax) splits by blocks."""
    from sklearn.linear_model import LassoLarsCV, RidgeCV
    from sklearn.model_selection import GridSearchCV

    from urbanrep.evaluate.protocols import inner_cv_by_blocks, make_regressor, make_share_model
    from urbanrep.evaluate.split_ridge import SplitRidgeCV

    cfg = EvalConfig(spatial_blocks=12, seeds=(0,))
    groups = np.repeat(np.arange(12), 10)
    probes = [make_regressor("ridge", cfg, 0), make_regressor("lasso", cfg, 0), make_share_model(cfg, 0)]
    for probe in probes:
        got = inner_cv_by_blocks(probe, groups, cfg, 0)
        inner = next(s for s in [got] + [st for _, st in getattr(got, "steps", [])]
                     if isinstance(s, (SplitRidgeCV, LassoLarsCV, GridSearchCV)))
        assert len(inner.cv) == cfg.inner_folds
        for train, test in inner.cv:
            assert not set(groups[train]) & set(groups[test])
    with pytest.raises(EvaluationError, match="spatial block"):
        inner_cv_by_blocks(make_regressor("ridge", cfg, 0), np.zeros(20, int), cfg, 0)
    # a probe without an inner search is left as it is
    rf = make_regressor("rf", cfg, 0)
    assert inner_cv_by_blocks(rf, groups, cfg, 0) is rf
    # the ridge alpha is chosen on the block splits by held-out squared error: the same choice and
    # fit as scikit-learn's RidgeCV(cv=splits, scoring="neg_mean_squared_error"), one SVD per split
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 30))
    for y in (x[:, :3].sum(1) + rng.normal(size=120) * 2, rng.normal(size=(120, 3))):
        fitted = inner_cv_by_blocks(make_regressor("ridge", cfg, 0), groups, cfg, 0).fit(x, y)
        ours = fitted.named_steps["ridge"]
        assert isinstance(ours, SplitRidgeCV) and not isinstance(make_regressor("ridge", cfg, 0).steps[1][1],
                                                                  SplitRidgeCV)
        xs = fitted.named_steps["scale"].transform(x)
        ref = RidgeCV(alphas=cfg.alphas, cv=ours.cv, scoring="neg_mean_squared_error").fit(xs, y)
        assert ours.alpha_ == pytest.approx(ref.alpha_)
        np.testing.assert_allclose(ours.predict(xs), ref.predict(xs), atol=1e-8)


def test_tasks_filter_evaluates_only_the_named_targets(singapore: CityBundle) -> None:
    rng = np.random.default_rng(0)
    emb = pd.DataFrame(rng.normal(size=(len(singapore.region_ids), 4)), index=pd.Index(singapore.region_ids,
                                                                                     name="region_id"))
    rep = evaluate_embeddings(emb, singapore, EvalConfig(seeds=(0,), tasks="population"))
    assert set(rep["tasks"]) == {"population"} and rep["landuse"] == {}
    assert rep["config"]["tasks"] == ["population"]
    with pytest.raises(EvaluationError, match="does not have"):
        evaluate_embeddings(emb, singapore, EvalConfig(seeds=(0,), tasks=("crime",)))
    with pytest.raises(ConfigError, match="at least one"):
        EvalConfig(tasks=())


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown evaluation protocol"):
        EvalConfig(protocol="best")
    with pytest.raises(ConfigError, match="unknown regressor"):
        EvalConfig(regressors=("ridge", "xgboost"))
    with pytest.raises(ConfigError, match="landuse_model"):
        EvalConfig(landuse_model="lda")
    assert EvalConfig(regressors="rf").regressors == ("rf",)
    assert EvalConfig(protocol="paper").n_folds == 10 and EvalConfig().n_folds == 5
    assert EvalConfig(protocol="paper").repeat_seeds == (0,) and len(EvalConfig().repeat_seeds) == 10


def test_too_few_regions_skipped() -> None:
    b = grid_bundle()  # 16 regions, one target
    emb = pd.DataFrame(np.random.default_rng(0).normal(size=(16, 4)), index=b.region_ids)
    rep = evaluate_embeddings(emb, b, EvalConfig(protocol="paper"))  # 10 folds need >= 20 rows
    assert rep["tasks"] == {} and "too few" in rep["skipped"]["population"]
    rep = evaluate_embeddings(emb, b, EvalConfig(folds=4, seeds=(0,)))
    assert rep["tasks"]["population"]["n"] == 16


# ---------------------------------------------------------------- land-use shares (real Singapore)


def test_distribution_scores_by_hand() -> None:
    y = np.array([[1.0, 0.0], [0.5, 0.5]])
    p = np.array([[0.5, 0.5], [0.5, 0.5]])
    s = distribution_scores(y, p, eps=0.0)
    assert s["l1"] == pytest.approx(0.5)  # (1 + 0) / 2
    assert s["kl"] == pytest.approx(np.log(2) / 2)
    assert s["cosine"] == pytest.approx((1 / np.sqrt(0.5) / 1.0 * 0.5 + 1.0) / 2)


def test_softmax_regression_gradient_and_fit() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    w = np.array([[2.0, -1.0, 0.0], [0.0, 1.0, -1.0], [1.0, 0.0, 0.0]])
    y = np.exp(log_softmax(x @ w, axis=1))
    model = SoftmaxRegression(alpha=1e-4).fit(x, y)
    assert np.abs(model.predict(x) - y).max() < 1e-3
    np.testing.assert_allclose(model.predict(x).sum(axis=1), 1.0)

    def loss(theta: np.ndarray) -> float:
        m = SoftmaxRegression(alpha=0.3)
        m.coef_, m.intercept_ = theta[:9].reshape(3, 3), theta[9:]
        return float(-(y * np.log(m.predict(x))).sum() + 0.15 * (m.coef_ ** 2).sum())

    def grad(theta: np.ndarray) -> np.ndarray:
        wt, b = theta[:9].reshape(3, 3), theta[9:]
        g = np.exp(log_softmax(x @ wt + b, axis=1)) - y
        return np.concatenate([(x.T @ g + 0.3 * wt).ravel(), g.sum(axis=0)])

    assert check_grad(loss, grad, rng.normal(size=12)) < 1e-3


def test_landuse_shares_singapore(singapore: CityBundle) -> None:
    poi = raw_modality_baseline(singapore, "poi")  # raw OSM points counted into 374 subzones
    assert poi.shape == (374, 103)
    assert np.expm1(poi.to_numpy()).sum() == pytest.approx(4330)  # 17 of 4,347 POIs fall outside every subzone
    rng = np.random.default_rng(0)
    noise = pd.DataFrame(rng.normal(size=(374, 16)), index=singapore.region_ids)
    shares = singapore.target_table()[LU].to_numpy()
    oracle = pd.DataFrame(shares + 0.01 * rng.normal(size=shares.shape), index=singapore.region_ids)
    cfg = EvalConfig(seeds=(0,))
    res = {name: run_evaluation(e, singapore, cfg)
           for name, e in {"poi": poi, "noise": noise, "oracle": oracle}.items()}
    m = {k: r.metrics["landuse"]["landuse_shares"] for k, r in res.items()}
    assert m["poi"]["n"] == 372  # two subzones have no land use at all
    assert res["poi"].metrics["n_regions"]["population"] == 364  # ten have no population value
    assert m["oracle"]["l1"] < 0.3 and m["oracle"]["cosine"] > 0.97
    assert m["poi"]["l1"] < m["noise"]["l1"] and m["poi"]["kl"] < m["noise"]["kl"]
    assert m["poi"]["cosine"] > m["noise"]["cosine"]
    pred = res["poi"].predictions.query("group == 'landuse_shares'")
    assert set(pred["target"]) == set(LU) and pred["probe"].eq("softmax_shares").all()
    sums = pred.groupby("region_id")["predicted"].sum()
    np.testing.assert_allclose(sums.to_numpy(), 1.0)
    assert len(sums) == 372 and (pred["predicted"] > 0).all()
    ridge = evaluate_embeddings(poi, singapore, EvalConfig(protocol="paper", landuse_model="ridge"))
    assert 0 < ridge["landuse"]["landuse_shares"]["l1"] < 2


# ---------------------------------------------------------------- baselines from raw layers


def test_raw_layer_features_on_grid() -> None:
    b = grid_bundle()  # 4 x 4 km grid, 50 POIs, an OD aggregate
    landuse = gpd.GeoDataFrame({"class": ["park", "residential"]},
                               geometry=[box(0, 0, 1500, 1000), box(0, 1000, 1000, 2000)], crs=b.crs)
    roads = gpd.GeoDataFrame({"class": ["primary"]}, geometry=[LineString([(0, 500), (4000, 500)])], crs=b.crs)
    b = replace(b, landuse=landuse, roads=roads)
    poi = modality_features(b, "poi", log1p=False)
    assert poi.to_numpy().sum() == 50 and poi.shape[1] == 3
    lu = modality_features(b, "landuse")
    assert lu.loc["r0", "landuse:park_share"] == pytest.approx(1.0)
    assert lu.loc["r1", "landuse:park_share"] == pytest.approx(0.5)
    assert lu.loc["r4", "landuse:residential_share"] == pytest.approx(1.0)
    road = modality_features(b, "road")
    np.testing.assert_allclose(road["roads:primary_km_per_km2"].to_numpy(), [1.0] * 4 + [0.0] * 12)
    mob = modality_features(b, "mobility", log1p=False, mobility="shares")
    assert mob["od:out"].sum() == mob["od:in"].sum() == sum(range(1, 16))
    assert mob.loc["r0", "od:out_to_r1"] == 1.0 and mob.loc["r15", "od:in_from_r14"] == 1.0
    emb = raw_feature_baseline(b, dim=5)
    assert emb.shape == (16, 5) and list(emb.index) == list(b.region_ids)
    assert available_baselines(b) == ["raw_all", "raw_poi", "raw_mobility", "raw_landuse", "raw_road"]
    with pytest.raises(EvaluationError, match="no street_view data"):
        raw_modality_baseline(b, "street_view")


def test_raw_feature_baseline_nyc(nyc_bundle: CityBundle) -> None:
    emb = raw_feature_baseline(nyc_bundle, dim=32)
    assert emb.shape == (180, 32) and emb.index.name == "region_id"
    pd.testing.assert_frame_equal(emb, raw_feature_baseline(nyc_bundle, dim=32))  # deterministic
    mob = modality_features(nyc_bundle, "mobility")
    assert mob.shape == (180, 2 + 14 + 2 + 48)  # out/in totals per OD matrix and slice, hourly flows
    img = raw_modality_baseline(nyc_bundle, "remote_sensing")
    assert img.shape == (180, 512) and not np.allclose(img.to_numpy(), np.log1p(np.abs(img.to_numpy())))


def test_report_files(tmp_path: Path, nyc_bundle: CityBundle, gurpp: pd.DataFrame) -> None:
    b = only_targets(nyc_bundle, ["crime"])
    rep = evaluate_embeddings(gurpp, b, EvalConfig(protocol="paper"))
    out = write_report({"gurpp": rep}, tmp_path / "out" / "eval.json")
    loaded = json.loads(out.read_text())
    assert loaded["gurpp"]["tasks"]["crime"]["r2"] == pytest.approx(rep["tasks"]["crime"]["r2"])
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["eval.json"]
    md = format_markdown({"gurpp": rep})
    assert "| gurpp | 0.577 |" in md and "protocol: paper" in md


# ---------------------------------------------------------------- benchmark runner (experiments/benchmark.py)


def test_benchmark_runner_smoke(tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner trains, evaluates both protocols, checks targets and writes JSON + Markdown to --out."""
    from experiments import benchmark

    out = tmp_path / "bench"
    assert benchmark.main(["--cities", "chicago77", "--seeds", "0", "--epochs", "1", "--ablations", "none",
                           "--strict-seeds", "1", "--out", str(out), "--data-root", str(data_root)]) == 0
    res = json.loads((out / "results.json").read_text())
    city = res["cities"]["chicago77"]
    assert set(city["methods"]) >= {"urbanrep", "raw_all_pca64", "raw_poi", "raw_mobility", "raw_landuse"}
    ours = city["methods"]["urbanrep"]
    assert ours["paper"]["n_seeds"] == 1 and set(ours["train"]["input_retention"]) == {"poi", "mobility", "landuse"}
    assert {t["task"] for t in city["targets"]} == {"check_in", "crime", "service_call"}
    md = (out / "RESULTS.md").read_text()
    assert "Protocol `paper`" in md and "Protocol `strict`" in md and "HAFusion" in md
    # spatial-block folds: 77 regions -> 10 blocks; the same tasks, no clustering columns
    assert "Protocol `spatial`" in md and "10 blocks" in md and set(ours["spatial"]) >= {"check_in", "crime"}
    assert benchmark.spatial_blocks_for(77) == 10 and benchmark.spatial_blocks_for(2325) == 290
    assert sorted(p.name for p in out.iterdir()) == ["RESULTS.md", "embeddings", "results.json"]
    cached = list((out / "embeddings" / "chicago77").glob("urbanrep_s0_e1_*.parquet"))
    assert len(cached) == 1  # a rerun reuses it
    for kind in benchmark.EVAL_CACHE_KINDS:  # the names the stale-evaluation cleanup globs for
        assert len(list(cached[0].parent.glob(benchmark.eval_cache_name(cached[0], kind, "*")))) == 1, kind
    emb = pd.read_parquet(cached[0]).set_index("region_id")
    assert emb.shape[0] == 77 and emb.index.name == "region_id"
    # variants that differ only in the output transform reuse the one as-trained run
    from urbanrep.graphs import GraphConfig, build_graph
    from urbanrep.network import ModelConfig
    from urbanrep.volumes import counted_modalities, region_counts, region_volumes
    from urbanrep.written import written_transform

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("a transform-only variant was trained again")

    monkeypatch.setattr("urbanrep.train.train", no_training)
    data, _ = build_graph(benchmark.load_city(benchmark.CITIES["chicago77"], data_root), GraphConfig())
    trained = list((out / "embeddings" / "chicago77").glob(f"{benchmark.TRAINED_PREFIX}*_s0_e1_*.parquet"))
    assert len(trained) == 1
    got = benchmark.train_embedding(data, "abl_no_smoothing", 0, 1, out / "embeddings" / "chicago77", "cpu")
    assert got is not None and got[0].shape == (77, 64) and got[1]["as_trained"] == trained[0].name
    default = ModelConfig()
    edges = data["region", "adjacent", "region"].edge_index.numpy()
    as_trained = pd.read_parquet(trained[0]).set_index("region_id").loc[list(data.region_ids)].to_numpy()
    again = written_transform(as_trained, edges, default.output_smoothing, default.output_scales,
                              default.output_position, default.output_norm, region_volumes(data, data.modalities),
                              default.output_variance, default.output_scale_regions,
                              region_counts(data, counted_modalities(data.modalities, default),
                                            default.output_counts, default.output_counts_shares))
    np.testing.assert_allclose(emb.loc[list(data.region_ids)].to_numpy(), again, atol=1e-6)
    with pytest.raises(SystemExit):  # outputs never land inside the repository
        benchmark.parse_args(["--out", str(Path(benchmark.__file__).parent / "out")])


def test_benchmark_cache_notices_changed_settings() -> None:
    from experiments.benchmark import changed_settings

    now = {"loss": {"temperature": 0.5, "feature_weight": 5.0}, "ensemble": 3, "output_smoothing": 0.5,
           "output_scales": 2}
    assert changed_settings({"loss": {"temperature": 0.5, "feature_weight": 5}, "ensemble": 3,
                             "output_smoothing": 0.5, "output_scales": 2}, now) == []
    assert changed_settings({"loss": {"temperature": 0.2, "feature_weight": 5.0}, "ensemble": 3,
                             "output_smoothing": 0.5, "output_scales": 2}, now) == ["loss.temperature"]
    # settings newer than the run are not compared, but the output transform did not exist: it was 0
    assert changed_settings({"loss": {"temperature": 0.5}, "ensemble": 3}, now) == ["output_smoothing",
                                                                                  "output_scales"]
    assert changed_settings({"loss": {}, "ensemble": 3}, dict(now, output_smoothing=0.0, output_scales=0)) == []
    assert changed_settings({"loss": {}, "ensemble": 3}, dict(now, output_position=8)) == [
        "output_smoothing", "output_scales", "output_position"]
    assert changed_settings({"loss": {}, "ensemble": 3, "output_smoothing": 0.5, "output_scales": 2},
                            dict(now, output_norm="unit_variance")) == ["output_norm"]


def test_benchmark_derives_a_transform_change_from_the_recorded_as_trained_run(tmp_path: Path) -> None:
    """Only the written-embedding transform changed: the run's recorded twin is reused by name (no training),
    even where the twin's hash no longer matches the current config (a training setting added since)."""
    from experiments.benchmark import _recorded_twin

    twin = tmp_path / "trained_0123456789_s0_e300_abc.parquet"
    pd.DataFrame({"region_id": ["a", "b"], "emb_000": [1.0, 2.0]}).to_parquet(twin)
    twin.with_suffix(".json").write_text('{"cpu_s": 3.0}')
    run = tmp_path / "urbanrep_s0_e300_abc.parquet"
    hit = (pd.DataFrame(), {"as_trained": twin.name}, run)
    got = _recorded_twin(hit, ["output_position"])
    assert got is not None and got[2] == twin and got[1] == {"cpu_s": 3.0} and list(got[0].index) == ["a", "b"]
    assert _recorded_twin(hit, ["output_position", "loss.temperature"]) is None  # training changed: retrain
    assert _recorded_twin(hit, []) is None and _recorded_twin(None, ["output_scales"]) is None
    assert _recorded_twin((pd.DataFrame(), {}, run), ["output_scales"]) is None  # no twin recorded


def test_benchmark_targets_relative_to_best_raw() -> None:
    from experiments.benchmark import City, Target, check_targets

    city = City("x", "x", None, ("a",), targets=(Target("paper", "a", ">=", 0.5),
                                                  Target("strict", "a", ">=", 0.05, "best_raw")))
    methods = {"urbanrep": {"paper": {"a": 0.6, "a_std": 0.01}, "strict": {"a": 0.7}},
               "raw_poi": {"paper": {"a": 0.9}, "strict": {"a": 0.66}},
               "raw_all_pca64": {"paper": {"a": 0.1}, "strict": {"a": 0.2}},
               "gurpp_published": {"paper": {"a": 0.99}, "strict": {"a": 0.99}}}
    paper, strict, *issue14 = check_targets(city, methods)
    assert paper["met"] and paper["gap"] == pytest.approx(0.1)
    assert strict["reference"] == {"baseline": "raw_poi", "value": 0.66}  # raw baselines only, not GURPP
    assert not strict["met"] and strict["required"] == pytest.approx(0.71)
    # issue 14 on every city: each task, both protocols, at least the best peer or raw row (not GURPP)
    assert [(t["protocol"], t["reference"]["baseline"], t["met"]) for t in issue14] == [
        ("paper", "raw_poi", False), ("strict", "raw_poi", True)]


def test_benchmark_peer_and_raw_bar_follows_the_metric_direction() -> None:
    from experiments.benchmark import City, check_targets, format_targets

    city = City("x", "x", None, ("landuse_shares", "nmi"))
    row = {"landuse_shares_l1": 0.5, "landuse_shares_kl": 0.3, "landuse_shares_cosine": 0.8, "nmi": 0.7}
    methods = {"urbanrep": {"paper": row, "strict": row},
               "peer_hrep": {"paper": {**row, "landuse_shares_l1": 0.45, "nmi": 0.6}, "strict": {}},
               "raw_landuse": {"paper": {**row, "landuse_shares_kl": 0.4, "nmi": 0.75}, "strict": {"nmi": 0.1}}}
    got = {(t["protocol"], t["task"]): t for t in check_targets(city, methods)}
    assert set(got) == {("paper", "landuse_shares_l1"), ("paper", "landuse_shares_kl"),
                        ("paper", "landuse_shares_cosine"), ("paper", "nmi"), ("strict", "nmi")}  # no row: no bar
    l1 = got[("paper", "landuse_shares_l1")]
    assert l1["op"] == "<=" and l1["reference"]["baseline"] == "peer_hrep" and not l1["met"]
    assert l1["gap"] == pytest.approx(-0.05)  # lower is better: 0.5 against 0.45
    assert got[("paper", "landuse_shares_kl")]["met"] and got[("paper", "landuse_shares_kl")]["gap"] == pytest.approx(0.0)
    assert not got[("paper", "nmi")]["met"] and got[("paper", "nmi")]["reference"]["baseline"] == "raw_landuse"
    assert all(t["source"] == "issue 14" for t in got.values())
    table = "\n".join(format_targets({"cities": {"x": {"targets": list(got.values())}}}))
    assert "| x | issue 14 | 3 of 5 | paper landuse_shares_l1 0.500, needs <= 0.450 (peer_hrep);" in table


def test_benchmark_redraw_checks_the_targets_again(tmp_path: Path) -> None:
    """--redraw writes the published results' tables again, every target checked by today's code."""
    import json
    import shutil

    from experiments.benchmark import REPO, main

    src = tmp_path / "results.json"
    shutil.copy(REPO / "experiments" / "results.json", src)
    earlier = json.loads(src.read_text())
    for res in earlier["cities"].values():
        res["targets"] = []  # as if written before the targets were set
    src.write_text(json.dumps(earlier))
    assert main(["--redraw", str(src), "--out", str(tmp_path / "out")]) == 0
    redrawn = json.loads((tmp_path / "out" / "results.json").read_text())
    for name, res in redrawn["cities"].items():
        sources = {t["source"] for t in res["targets"]}
        assert "issue 14" in sources, name  # every city with targets gets issue 14's bar
        assert res["methods"].keys() == earlier["cities"][name]["methods"].keys()
    assert redrawn["meta"]["command"] == earlier["meta"]["command"] and redrawn["meta"]["redrawn"]["command"]
    assert "redrawn from the measured scores" in (tmp_path / "out" / "RESULTS.md").read_text()
    assert json.loads(src.read_text()) == earlier  # the earlier file is read, never rewritten


@pytest.mark.parametrize(("name", "folds"), [("hafusion", 10), ("mgfn", 5), ("mtgc", 5)])
def test_peer_protocols_reproduce_the_published_scorers(name: str, folds: int) -> None:
    """--protocol hafusion|mgfn|mtgc = the peers' tasks.py: Ridge(1), unshuffled KFold(k), clip at 0, pooled R²."""
    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score
    from sklearn.model_selection import KFold

    rng = np.random.default_rng(0)
    x = rng.normal(size=(180, 8))
    y = np.clip(x @ rng.normal(size=8) * 10 + rng.normal(size=180) * 5, 0, None)
    config = EvalConfig(protocol=name)
    assert config.n_folds == folds and config.clip and config.repeat_seeds == (0,)
    assert "unshuffled" in config.describe() and name in config.as_dict()["protocol"]
    ours = regression_mod.oof_predictions_array(x, y, config)[0]
    theirs = np.concatenate([Ridge(alpha=1).fit(x[tr], y[tr]).predict(x[te]) for tr, te in KFold(folds).split(x)])
    theirs[theirs < 0] = 0
    np.testing.assert_allclose(ours, theirs)
    assert regression_mod.regression_metrics(y, ours[None])["r2"] == pytest.approx(r2_score(y, theirs))


def test_input_rows_compare_the_embedding_with_each_input() -> None:
    """R² and NMI: higher is better; share L1: lower is better; missing figures are left out."""
    from urbanrep.evaluate.report import input_rows

    metrics = {"tasks": {"a": {"r2": 0.5}, "b": {"r2": 0.2}}, "landuse": {"lu": {"l1": 0.3}},
               "clustering": {"nmi": 0.7},
               "inputs": {"poi": {"tasks": {"a": {"r2": 0.4}, "b": {"r2": 0.3}}, "landuse": {"lu": {"l1": 0.2}}},
                          "road": {"tasks": {"a": {"r2": 0.1}}, "clustering": {"nmi": 0.6}}}}
    rows = {label: (own, values, better) for label, own, values, better in input_rows(metrics)}
    assert rows["a R2"] == (0.5, [0.4, 0.1], True)
    assert rows["b R2"] == (0.2, [0.3, None], False)
    assert rows["lu L1"] == (0.3, [0.2, None], False)
    assert rows["clustering NMI"] == (0.7, [None, 0.6], True)
    assert input_rows({"tasks": {"a": {"r2": 0.5}}}) == []


def test_input_tables_take_the_graph_features(nyc) -> None:
    from urbanrep.graphs.schema import REGION, feature_key
    from urbanrep.input_baselines import input_tables

    tables = input_tables(nyc, ("mobility", "poi", "road"))
    assert list(tables) == ["poi", "mobility"]  # graph order; road is not in this graph
    poi = tables["poi"]
    assert poi.index.name == "region_id" and list(poi.index) == list(nyc.region_ids)
    np.testing.assert_array_equal(poi.to_numpy(), nyc[REGION][feature_key("poi")].numpy())
    assert poi.columns[0].startswith("log1p:")


def test_evaluation_reports_progress(nyc_bundle: CityBundle, gurpp: pd.DataFrame, monkeypatch: pytest.MonkeyPatch,
                                     caplog: pytest.LogCaptureFixture) -> None:
    """One step per outer fold of every repeat of every task and one per clustering label, shown on
    the progress bar; a log line with the ETA once the evaluation has run LOG_INTERVAL_S (none for a
    quick one); the metrics do not change."""
    import logging

    from urbanrep import progress as pg
    from urbanrep.evaluate.harness import run_evaluation

    config = EvalConfig(seeds=(0, 1), tasks=("crime", "check_in"))
    seen: list[tuple[str, int | None, list[str]]] = []

    class Bar:
        def __init__(self, stage: str, total: int | None) -> None:
            seen.append((stage, total, []))

        def update(self, n: int = 1, **info: object) -> None:
            seen[-1][2].append(str(info["step"]))

        def close(self) -> None:
            seen[-1][2].append("closed")

    previous = pg.set_reporter(Bar)
    try:
        with caplog.at_level(logging.INFO, logger="urbanrep"):
            quiet = run_evaluation(gurpp, nyc_bundle, config).metrics
            assert not [r for r in caplog.records if "ETA" in r.getMessage()]
            monkeypatch.setattr(pg, "LOG_INTERVAL_S", 0.0)
            loud = run_evaluation(gurpp, nyc_bundle, config, stage="evaluation of x").metrics
    finally:
        pg.set_reporter(previous)
    assert seen[0] == ("evaluation", 21, ["crime, ridge"] * 10 + ["check_in, ridge"] * 10
                       + ["clustering community_district", "closed"])  # 2 tasks x 2 repeats x 5 folds + 1
    lines = [r.getMessage() for r in caplog.records if "ETA" in r.getMessage()]
    assert len(lines) == 21 and lines[-1].startswith("evaluation of x: 21/21 done (clustering community_district)")
    assert ("repeat_jobs" in lines[0]) == ((os.cpu_count() or 1) > 1) and "repeat_jobs" not in lines[1]
    assert quiet["tasks"] == loud["tasks"] and quiet["clustering"]["nmi"] == loud["clustering"]["nmi"]
    assert pg.format_seconds(185) == "3 min 05 s"


def test_repeats_in_parallel_give_the_same_numbers(nyc_bundle: CityBundle, gurpp: pd.DataFrame) -> None:
    """``repeat_jobs`` runs the strict protocol's repeats in worker processes: the same metrics to the
    bit, scalar and share probes, under shuffled and spatial-block folds; 0 is refused."""
    from dataclasses import replace

    from urbanrep.evaluate.harness import run_evaluation
    from urbanrep.evaluate.landuse import share_oof_predictions

    for config in (EvalConfig(seeds=(0, 1, 2), tasks=("crime",)),
                   EvalConfig(seeds=(0, 1), tasks=("crime",), spatial_blocks=20)):
        one = run_evaluation(gurpp, nyc_bundle, config).metrics
        two = run_evaluation(gurpp, nyc_bundle, replace(config, repeat_jobs=2)).metrics
        assert one["tasks"] == two["tasks"]
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 4)), rng.dirichlet(np.ones(3), size=60)
    steps: list[int] = []
    config = EvalConfig(seeds=(0, 1, 2), softmax_alphas=(1.0, 10.0))
    ref = share_oof_predictions(x, y, config)
    par = share_oof_predictions(x, y, replace(config, repeat_jobs=-1), on_fold=lambda: steps.append(1))
    np.testing.assert_array_equal(ref, par)
    assert len(steps) == 15  # every fold of every repeat reported
    with pytest.raises(ConfigError, match="repeat_jobs"):
        EvalConfig(repeat_jobs=-2)


def test_repeat_processes_automatic(monkeypatch: pytest.MonkeyPatch) -> None:
    """``repeat_jobs=0`` (default): worker processes only for a slow probe on enough regions, as many
    as the free cores and the repeats allow; explicit values are taken as they are."""
    import urbanrep.evaluate.repeats as rp

    monkeypatch.setattr(rp, "free_cores", lambda own=0.0: 4)
    auto = EvalConfig()
    assert auto.repeat_jobs == 0
    assert rp.repeat_processes(auto, 10, slow=True, rows=rp.AUTO_PARALLEL_ROWS) == 4
    assert rp.repeat_processes(auto, 3, slow=True, rows=2000) == 3
    assert rp.repeat_processes(auto, 10, slow=True, rows=rp.AUTO_PARALLEL_ROWS - 1) == 1
    assert rp.repeat_processes(auto, 10, slow=False, rows=5000) == 1
    monkeypatch.setattr(rp, "free_cores", lambda own=0.0: 1)
    assert rp.repeat_processes(auto, 10, slow=True, rows=5000) == 1  # a busy machine
    assert rp.repeat_processes(EvalConfig(repeat_jobs=1), 10, slow=True, rows=5000) == 1
    assert rp.repeat_processes(EvalConfig(repeat_jobs=-1), 7, slow=False, rows=10) == 7
    assert rp.repeat_processes(EvalConfig(repeat_jobs=3), 2, slow=False, rows=10) == 2
    import urbanrep.cores as cores_mod

    monkeypatch.setattr(cores_mod, "cores_and_load", lambda: (2, 1.0))  # an idle 2-core machine, this process busy
    assert cores_mod.free_cores(own=1.0) == 2 and cores_mod.free_cores() == 1
    monkeypatch.setattr(cores_mod, "cores_and_load", lambda: (2, 2.1))  # another job on the other core
    assert cores_mod.free_cores(own=1.0) == 1
    monkeypatch.setattr(cores_mod, "cores_and_load", lambda: (4, 0.0))
    assert cores_mod.free_cores(own=1.0) == 4


def test_step_log_eta_follows_the_current_pace(monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """Quick steps and then slow ones: the ETA takes the pace of the last few steps, not the average
    since the start; quiet within the interval, a last line at close."""
    import logging

    from urbanrep import progress as pg

    clock = [0.0]
    monkeypatch.setattr(pg.time, "perf_counter", lambda: clock[0])
    logger = logging.getLogger("urbanrep.test_steplog")
    with caplog.at_level(logging.INFO, logger="urbanrep"):
        steps = pg.StepLog("evaluation", 30, logger)
        for _ in range(20):
            clock[0] += 0.01
            steps.step("quick")
        assert not caplog.records
        for _ in range(4):
            clock[0] += 25.0
            steps.step("slow")
        for _ in range(2):  # a burst of 3 steps (a repeat's folds from a worker) every 30 s
            clock[0] += 30.0
            for _ in range(3):
                clock[0] += 0.001
                steps.step("burst")
        steps.close()
    lines = [r.getMessage() for r in caplog.records]
    # a line per slow step and at each burst's first step (10 s since the last line), one more at close
    assert len(lines) == 7 and lines[0].startswith("evaluation: 21/30 done (slow), 25 s elapsed")
    assert lines[3].startswith("evaluation: 24/30 done (slow), 1 min 40 s elapsed, ETA 2 min 30 s")
    assert lines[5].startswith("evaluation: 28/30 done (burst), 2 min 40 s elapsed, ETA 20 s")  # the bursts' pace
    assert lines[6].startswith("evaluation: 30/30 done (burst), 2 min 40 s elapsed, ETA 0 s")


def test_benchmark_runs_on_other_graphs_are_cached_apart(tmp_path: Path) -> None:
    """A run on a rook graph never stands in for the same model's run on the queen graph (round ad
    changed the graph default, and GRAPH_OVERRIDES variants train on other graphs); a queen graph
    keeps the key runs had before graphs recorded their adjacency."""
    from conftest import grid_bundle

    from experiments.benchmark import GRAPH_OVERRIDES, _cached_run, variant_graph
    from urbanrep.graphs import GraphConfig, build_graph
    from urbanrep.graphs.io import load_graph, save_graph

    bundle, built = grid_bundle(4), {}
    rook, queen = variant_graph(bundle, "urbanrep", built), variant_graph(bundle, "abl_queen", built)
    assert GRAPH_OVERRIDES["abl_queen"] == {"adjacency": "queen"} and len(built) == 2
    assert rook.adjacency == "rook" and queen.adjacency == "queen"
    assert variant_graph(bundle, "abl_queen", built) is queen  # built once
    paths = {_cached_run(g, "urbanrep", 0, 300, tmp_path)[0] for g in (rook, queen)}
    assert len(paths) == 2
    old = build_graph(bundle, GraphConfig(adjacency="queen"))[0]
    del old.adjacency  # a graph written before the field
    assert _cached_run(old, "urbanrep", 0, 300, tmp_path)[0] == _cached_run(queen, "urbanrep", 0, 300, tmp_path)[0]
    save_graph(rook, {}, tmp_path / "graph.pt")
    assert load_graph(tmp_path / "graph.pt").adjacency == "rook"
