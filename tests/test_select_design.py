"""The development loop's cost rule (experiments/select_design.py): costlier candidates must buy quality."""

from __future__ import annotations

from typing import Any

import pytest


def _entry(score: float, cpu: dict[str, float | None]) -> dict[str, Any]:
    return {"score": score, "cities": {c: {"cpu_s": v} for c, v in cpu.items()}}


def test_cost_rule_marks_costly_candidates_without_a_clear_gain() -> None:
    from experiments.select_design import COST_GAIN, apply_cost_rule

    res = {"candidates": {
        "urbanrep": _entry(0.50, {"a": 10.0, "b": 20.0}),
        "cheap": _entry(0.49, {"a": 3.0, "b": 7.0}),
        "noise": _entry(0.40, {"a": 11.0, "b": 21.0}),  # within the timing tolerance: not a cost question
        "costly_small_gain": _entry(0.50 + COST_GAIN / 2, {"a": 20.0, "b": 40.0}),
        "costly_clear_gain": _entry(0.50 + COST_GAIN + 0.001, {"a": 20.0, "b": 40.0}),
        "too_slow": _entry(0.70, {"a": 40.0, "b": 80.0}),
        "unmeasured": _entry(0.60, {"a": None, "b": 20.0}),
    }}
    apply_cost_rule(res)
    got = {c: (e["cost"], e["too_costly"]) for c, e in res["candidates"].items()}
    assert got["urbanrep"] == (1.0, False)
    assert got["cheap"][0] == pytest.approx(1 / 3) and not got["cheap"][1]
    assert not got["noise"][1]
    assert got["costly_small_gain"] == (2.0, True)
    assert got["costly_clear_gain"] == (2.0, False)
    assert got["too_slow"] == (4.0, True)
    assert got["unmeasured"] == (None, False)  # no cost recorded: the rule cannot judge it


def test_cost_rule_compares_over_the_cities_a_candidate_ran_on() -> None:
    from experiments.select_design import apply_cost_rule

    res = {"candidates": {"urbanrep": _entry(0.5, {"a": 10.0, "b": 90.0}),
                          "pruned_after_a": _entry(0.3, {"a": 20.0})}}
    apply_cost_rule(res)
    assert res["candidates"]["pruned_after_a"]["cost"] == 2.0  # a alone, not a against a + b
    res = {"candidates": {"x": _entry(0.5, {"a": 1.0})}}
    apply_cost_rule(res)  # no default among the candidates: nothing to compare with
    assert res["candidates"]["x"] == {"score": 0.5, "cities": {"a": {"cpu_s": 1.0}}, "cost": None, "too_costly": False}


def test_every_declared_round_names_known_variants_and_training_overrides_are_real_fields() -> None:
    """A round's candidates (the ``*_CANDIDATES`` tuples) must be variants the benchmark can train,
    and a training override must name a ``TrainConfig`` field (else the candidate trains as the default)."""
    import dataclasses

    import experiments.select_design as sd
    from experiments.benchmark import TRAIN_OVERRIDES, model_variants
    from urbanrep.train import TrainConfig

    rounds = {k: v for k, v in vars(sd).items() if k.endswith("CANDIDATES") and isinstance(v, tuple)}
    assert {"WIDTH_CANDIDATES", "OPTIMISER_CANDIDATES", "EXPERT_CANDIDATES"} <= set(rounds)
    known = set(model_variants())
    for name, cands in rounds.items():
        assert set(cands) <= known, (name, set(cands) - known)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for variant, overrides in TRAIN_OVERRIDES.items():
        assert variant in known and set(overrides) <= fields, (variant, overrides)


def test_twin_name_is_stable_across_later_settings() -> None:
    """Transform-only changes, and training settings added later at their off value, keep the twin."""
    from dataclasses import replace

    from experiments.benchmark import LATER_TRAINING_OFF, _config_hash, twin_name
    from urbanrep.network import ModelConfig
    from urbanrep.train import TrainConfig, config_to_dict

    # a model with another modality than mobility: its training settings as effective_train_config gives them
    mc, tc = ModelConfig(), TrainConfig(epochs=300, seed=0, num_threads=1, mobility_only_lr_scale=1.0)
    base = twin_name(mc, tc)
    assert twin_name(replace(mc, output_volumes=False, output_norm="none", output_smoothing=0.0), tc) == base
    assert twin_name(replace(mc, loss=replace(mc.loss, negative_hops=1)), tc) != base
    assert twin_name(replace(mc, loss=replace(mc.loss, temperature=0.2)), tc) != base
    # what a run hashed before ``negative_hops`` existed recorded: the same name
    assert LATER_TRAINING_OFF["loss"]["negative_hops"] == 0 and LATER_TRAINING_OFF["loss"]["region_mask"] == 0.0
    assert twin_name(replace(mc, loss=replace(mc.loss, region_mask=0.25)), tc) != base
    assert twin_name(replace(mc, loss=replace(mc.loss, contrast_channels=32)), tc) != base
    assert base.endswith(_config_hash({"model": _before(config_to_dict(mc)), "train": _train(config_to_dict(tc))}))
    assert twin_name(mc, replace(tc, mobility_only_lr_scale=3.0)) != base  # on at its new value: another run


def test_the_mobility_only_rate_keys_only_mobility_only_runs() -> None:
    """The default's mobility-only learning-rate scale is left out of the run key of any other model."""
    from types import SimpleNamespace

    from experiments.benchmark import effective_train_config
    from urbanrep.network import ModelConfig
    from urbanrep.train import TrainConfig

    tc = TrainConfig()
    assert tc.mobility_only_lr_scale == 10.0  # round 2026-12-07af
    for mods, scale in ((("poi", "mobility"), 1.0), (("poi",), 1.0), (("mobility",), 10.0)):
        got = effective_train_config(tc, ModelConfig(), SimpleNamespace(modalities=mods))
        assert got.mobility_only_lr_scale == scale, mods
    only = effective_train_config(tc, ModelConfig(modalities=("mobility",)), SimpleNamespace(modalities=("poi", "mobility")))
    assert only.mobility_only_lr_scale == 10.0  # the model's modalities, not the graph's
    # a cached run's meta without volume_scales was written with the package default
    from experiments.benchmark import TRANSFORM_OFF
    from urbanrep.volumes import DEFAULT_VOLUME_SCALES

    assert TRANSFORM_OFF["volume_scales"] == DEFAULT_VOLUME_SCALES


def _before(model: dict[str, Any]) -> dict[str, Any]:
    from experiments.benchmark import LATER_TRANSFORM_FIELDS, TRANSFORM_OFF

    out = {k: v for k, v in {**model, **TRANSFORM_OFF}.items() if k not in LATER_TRANSFORM_FIELDS}
    out["loss"] = {k: v for k, v in out["loss"].items() if k not in ("negative_hops", "region_mask", "contrast_channels",
                                                                    "context_weight")}
    return out


def _train(train: dict[str, Any]) -> dict[str, Any]:
    """The training settings as runs hashed them before ``mobility_only_lr_scale`` existed."""
    from experiments.benchmark import _NON_SEMANTIC

    return {k: v for k, v in train.items() if k not in _NON_SEMANTIC and k != "mobility_only_lr_scale"}


def test_benchmark_keeps_the_rows_a_run_did_not_compute(tmp_path) -> None:
    """``--keep``: an earlier results.json fills in the rows and cities a run did not compute; a row
    of a computed city can be kept under a new name (the previous default as its ablation)."""
    import copy
    import json

    from experiments.benchmark import REPO, keep_rows

    real = json.loads((REPO / "experiments" / "results.json").read_text())["cities"]
    sp = real["sao_paulo"]["methods"]
    old_default, new_default = copy.deepcopy(sp["urbanrep"]), copy.deepcopy(sp["urbanrep"])
    new_default["paper"] = dict(new_default["paper"], jobs=0.5)
    earlier = {"meta": {"command": "python -m experiments.benchmark (earlier)", "date": "2026-12-06"},
               "cities": {"nyc180": real["nyc180"],
                          "sao_paulo": dict(real["sao_paulo"], methods={"urbanrep": old_default,
                                                                         "peer_hafusion": sp["peer_hafusion"],
                                                                         "raw_road": sp["raw_road"]})}}
    old = tmp_path / "results.json"
    old.write_text(json.dumps(earlier))
    cities = {"sao_paulo": dict(real["sao_paulo"], methods={"urbanrep": new_default, "raw_road": sp["raw_road"]})}
    kept = keep_rows(cities, old, {"urbanrep": "abl_no_flow_inputs"})
    assert list(cities) == ["nyc180", "sao_paulo"]  # the other city kept, in the earlier order
    methods = cities["sao_paulo"]["methods"]
    assert list(methods) == ["urbanrep", "abl_no_flow_inputs", "peer_hafusion", "raw_road"]
    assert methods["urbanrep"]["paper"]["jobs"] == 0.5  # this run's row wins
    assert methods["abl_no_flow_inputs"]["paper"] == old_default["paper"]
    assert "without flow-profile inputs" in methods["abl_no_flow_inputs"]["description"]
    assert kept["rows"] == ["nyc180/*", "sao_paulo/abl_no_flow_inputs", "sao_paulo/peer_hafusion"]
    assert cities["nyc180"] == real["nyc180"]


def test_benchmark_keep_options_are_checked(tmp_path) -> None:
    """``--keep`` needs an existing file and ``--keep-renamed`` OLD=NEW pairs: one-line errors otherwise."""
    from experiments.benchmark import parse_args

    out = ["--out", str(tmp_path / "bench")]
    with pytest.raises(SystemExit):
        parse_args(out + ["--keep", str(tmp_path / "missing.json")])
    with pytest.raises(SystemExit):
        parse_args(out + ["--keep-renamed", "urbanrep=abl_no_flow_inputs"])  # without --keep
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(SystemExit):
        parse_args(out + ["--keep", str(tmp_path / "results.json"), "--keep-renamed", "urbanrep"])
    args = parse_args(out + ["--keep", str(tmp_path / "results.json"), "--keep-renamed", "urbanrep=abl_x"])
    assert args.keep_renamed == ["urbanrep=abl_x"]


def test_candidates_reused_as_the_default_train_as_the_default(tmp_path) -> None:
    """Wherever ``same_as_default`` reuses the default's runs for a candidate, training the candidate
    itself (2 epochs, a 4 x 4 grid city with POIs and trips, each subset of them) writes the same
    embedding: the hand-kept groups of ``INERT_WHERE`` cannot drift from what the settings do. (28
    of the 29 pairs are equal to the bit; one global fusion weight on a mobility-only graph differs
    in float rounding, about 1e-7.)"""
    import numpy as np

    from experiments.select_design import INERT_WHERE, same_as_default, train_embedding
    from tests.conftest import grid_bundle
    from urbanrep.graphs import GraphConfig, build_graph

    bundle = grid_bundle(4)
    checked = exact = 0
    for mods in (("poi",), ("mobility",), ("poi", "mobility")):
        data, _ = build_graph(bundle, GraphConfig(modalities=mods))
        cache = tmp_path / "+".join(mods)
        default = train_embedding(data, "urbanrep", 0, 2, cache, "cpu")[0]
        for names, _ in INERT_WHERE:
            for name in names:
                if not same_as_default(name, mods):
                    continue
                got = train_embedding(data, name, 0, 2, cache, "cpu")[0]
                assert got.index.equals(default.index), (name, mods)
                np.testing.assert_allclose(got.to_numpy(), default.to_numpy(), rtol=1e-4, atol=1e-5,
                                           err_msg=f"{name} on {mods} trains otherwise")
                exact += bool(np.array_equal(got.to_numpy(), default.to_numpy()))
                checked += 1
    assert checked >= 20
    assert exact >= checked - 1


def test_parallel_cities_run_the_same_settings_and_keep_the_pruning_rule(tmp_path, monkeypatch) -> None:
    """``--jobs``: each city's process gets every setting of the parent; the pruning city's scores prune as in one process."""
    import experiments.select_design as sd

    args = sd.parse_args(["--out", str(tmp_path / "out"), "--cities", "chicago77", "sao_paulo", "--candidates",
                          "urbanrep", "dev_layers1", "--seeds", "3", "4", "--epochs", "7", "--strict-seeds", "2",
                          "--modalities", "mobility", "--threads", "1", "--jobs", "2"])
    child = sd.parse_args(sd.city_command(args, "sao_paulo", ["urbanrep"])[3:])
    for name, value in vars(args).items():
        expected = {"cities": ["sao_paulo"], "candidates": ["urbanrep"], "jobs": 1}.get(name, value)
        assert getattr(child, name) == expected, name
    scores = {"urbanrep": 0.50, "dev_layers1": 0.46, "abl_no_feature_loss": 0.48}
    monkeypatch.setattr(sd, "run", lambda a: {"candidates": {c: {"cities": {a.cities[0]: {"score": v}}}
                                                             for c, v in scores.items()}})
    assert sd.pruned_on(args, "chicago77") == ["dev_layers1"]  # more than PRUNE_MARGIN (0.03) below
    with pytest.raises(SystemExit):
        sd.parse_args(["--out", str(tmp_path / "out"), "--jobs", "0"])
