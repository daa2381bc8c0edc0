"""The Python path of a new user: public names, layer constructors, summaries, dotted overrides."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

import urbanrep
from urbanrep import Aggregate, CityBundle, RunConfig
from urbanrep.errors import BundleError, ConfigError


def test_public_names_import_from_the_package() -> None:
    for name in urbanrep.__all__:
        assert getattr(urbanrep, name) is not None, name
    from urbanrep import EvalConfig, GraphConfig, ModelConfig, ParquetLayer, TrainConfig  # noqa: F401


def test_aggregate_constructors_from_dense_arrays() -> None:
    ids = ["a", "b", "c"]
    od = Aggregate.from_matrix("od", "mobility", ids, np.array([[0, 2, 0], [1, 0, 0], [0, 0, 5]]))
    assert od.kind == "matrix" and len(od.table) == 3  # only the non-zero pairs
    values, _ = od.dense(np.array(ids))
    np.testing.assert_array_equal(values[0], [[0, 2, 0], [1, 0, 0], [0, 0, 5]])
    sliced = Aggregate.from_matrix("od7", "mobility", ids, np.ones((7, 3, 3)))
    assert sliced.dense(np.array(ids))[0].shape == (7, 3, 3)
    poi = Aggregate.from_vectors("poi_counts", "poi", ids, np.arange(6).reshape(3, 2), columns=["shop", "food"])
    assert poi.value_columns() == ["shop", "food"] and poi.table["region_id"].tolist() == ids
    assert Aggregate.from_vectors("pop", "poi", ids, [1.0, 2.0, 3.0]).value_columns() == ["pop_0"]
    with pytest.raises(BundleError, match="one row per region"):
        Aggregate.from_vectors("x", "poi", ids, np.zeros((2, 4)))
    with pytest.raises(BundleError, match=r"\[N, N\]"):
        Aggregate.from_matrix("x", "mobility", ids, np.zeros((3, 4)))
    assert repr(poi) == "Aggregate('poi_counts', modality='poi', kind='vector', table=3x3)"


def test_print_bundle_is_a_summary(nyc_bundle: CityBundle) -> None:
    text = repr(nyc_bundle)
    assert text.startswith("CityBundle(nyc_manhattan180: 180 regions") and "\n" not in text and len(text) < 600


def test_run_config_from_dotted_overrides() -> None:
    config = RunConfig.from_overrides("train.epochs=50", **{"model.fusion.mode": "global", "evaluate.seeds": [1, 2]})
    assert config.train.epochs == 50 and config.model.fusion.mode == "global" and config.evaluate.seeds == (1, 2)
    assert RunConfig.from_overrides() == RunConfig()
    with pytest.raises(ConfigError, match="epochs"):
        RunConfig.from_overrides("train.epoch=3")


def test_embedded_copy_log_line_without_data_root(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """No 'data root ... has no nyc_manhattan180' when there is no data root at all."""
    from urbanrep.datasets import load_dataset

    caplog.set_level(logging.INFO, logger="urbanrep.datasets")
    bundle = load_dataset("nyc_manhattan180", data_root=tmp_path / "missing")
    assert len(bundle.regions) == 180
    text = caplog.text
    assert "has no nyc_manhattan180" not in text and "no data root at" in text and "embedded" in text
