"""The written-embedding transform's last step: the overall scale (ModelConfig.output_norm)."""

from __future__ import annotations

import numpy as np
import pytest

from urbanrep.errors import ConfigError
from urbanrep.network import ModelConfig
from urbanrep.position import column_variances, position_count
from urbanrep.written import scale_to_total_variance, written_transform


def _path(n: int) -> np.ndarray:
    return np.array([np.arange(n - 1), np.arange(1, n)])


def test_scale_to_total_variance_sums_the_column_variances_to_one_by_default() -> None:
    rng = np.random.default_rng(0)
    emb = (rng.normal(size=(50, 130)) * rng.uniform(0.1, 9.0, size=130) + 4.0).astype(np.float32)
    np.testing.assert_allclose(column_variances(emb), emb.astype(np.float64).var(axis=0), rtol=1e-12)
    out = scale_to_total_variance(emb)
    assert out.dtype == np.float32 and out.shape == emb.shape
    assert abs(out.astype(np.float64).var(axis=0).sum() - 1.0) < 1e-5
    ratio = out / emb  # one factor for every entry: directions, angles and clusters are unchanged
    np.testing.assert_allclose(ratio, ratio[0, 0], rtol=1e-5)
    constant = np.ones((5, 3), np.float32)
    assert scale_to_total_variance(constant) is constant  # nothing to scale


def test_written_transform_applies_the_scale_last() -> None:
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(40, 6)).astype(np.float32) * 7
    plain = written_transform(emb, _path(40), 0.5, 2, 8)
    scaled = written_transform(emb, _path(40), 0.5, 2, 8, "unit_variance")
    assert plain.shape == scaled.shape == (40, 18 + position_count(40, 8))
    np.testing.assert_allclose(scaled, plain / np.sqrt(plain.astype(np.float64).var(axis=0).sum()), rtol=1e-5)
    assert written_transform(emb, _path(40), 0.0, 0, 0) is emb
    with pytest.raises(ValueError, match="norm"):
        written_transform(emb, _path(40), 0.0, 0, 0, "l2")


def test_model_config_checks_output_norm() -> None:
    with pytest.raises(ConfigError, match="output_norm"):
        ModelConfig(output_norm="standardise")


def test_saved_configs_keep_their_scale() -> None:
    """A saved model writes what it wrote when it was trained: a config from before ``output_norm``
    existed (no key) reads back at the scale as trained."""
    from urbanrep.train import config_to_dict, model_config_from_dict

    now = config_to_dict(ModelConfig())
    assert model_config_from_dict(now).output_norm == "unit_variance"
    before = {k: v for k, v in now.items() if k != "output_norm"}
    assert model_config_from_dict(before).output_norm == "none"


def test_written_layout_names_every_column() -> None:
    """The layout's widths add up to the written width; layout_columns turns them into column ranges."""
    from urbanrep.written import layout_columns, written_layout

    emb = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)
    edges = np.array([np.arange(39), np.arange(1, 40)])
    vol = np.random.default_rng(1).normal(size=(40, 2))
    out = written_transform(emb, edges, 0.5, 2, 8, "unit_variance", vol)
    layout = written_layout(6, 0.5, 2, position_count(40, 8), ["poi total, log scale", "poi total, linear scale"],
                            "the consensus of the 3 members")
    assert sum(w for _, w in layout) == out.shape[1] == 6 * 3 + 5 + 2
    cols = layout_columns(layout)
    assert cols[0] == {"first": "emb_000", "last": "emb_005",
                       "holds": "the consensus of the 3 members, mixed with the neighbours' mean (share 0.5)"}
    assert cols[2]["holds"] == "its 2-hop neighbour mean" and cols[3]["first"] == "emb_018"
    assert cols[-1] == {"first": "emb_024", "last": "emb_024", "holds": "volume: poi total, linear scale"}
    assert written_layout(6, 0.0, 0, 0)[0] == ("the embedding as trained", 6)


def test_output_variance_sets_the_total_variance() -> None:
    """``output_variance`` is the total the written embedding is scaled to; one factor for every entry."""
    rng = np.random.default_rng(2)
    emb = rng.normal(size=(40, 6)).astype(np.float32) * 7
    one = written_transform(emb, _path(40), 0.5, 2, 8, "unit_variance")
    three = written_transform(emb, _path(40), 0.5, 2, 8, "unit_variance", total_variance=3.0)
    assert abs(three.astype(np.float64).var(axis=0).sum() - 3.0) < 1e-4
    np.testing.assert_allclose(three, one * np.sqrt(3.0), rtol=1e-5)
    # inert without the overall scale
    np.testing.assert_array_equal(written_transform(emb, _path(40), 0.5, 2, 8, total_variance=3.0),
                                  written_transform(emb, _path(40), 0.5, 2, 8))
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="output_variance"):
            ModelConfig(output_variance=bad)


def test_saved_configs_keep_their_total_variance() -> None:
    """A model saved before ``output_variance`` existed wrote unit total variance and still does."""
    from urbanrep.train import config_to_dict, model_config_from_dict

    now = config_to_dict(ModelConfig())
    assert model_config_from_dict(now).output_variance == ModelConfig().output_variance
    before = {k: v for k, v in now.items() if k != "output_variance"}
    assert model_config_from_dict(before).output_variance == 1.0


def test_benchmark_twins_ignore_the_total_variance() -> None:
    """The benchmark's 'off' value of output_variance is the one every run before it wrote."""
    from experiments.benchmark import LATER_TRANSFORM_FIELDS, TRANSFORM_OFF

    assert TRANSFORM_OFF["output_variance"] == 1.0 and "output_variance" in LATER_TRANSFORM_FIELDS
