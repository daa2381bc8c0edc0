"""Positional columns of the written embedding (ModelConfig.output_position)."""

from __future__ import annotations

import numpy as np
import pytest

from urbanrep import position
from urbanrep.errors import ConfigError
from urbanrep.experts.testing import random_region_graph
from urbanrep.fusion.losses import LossConfig
from urbanrep.network import ModelConfig
from urbanrep.position import POSITION_MAX, append_position, laplacian_position, position_count
from urbanrep.train import TrainConfig, train


def _path(n: int) -> np.ndarray:
    return np.array([np.arange(n - 1), np.arange(1, n)])


def test_position_count_follows_the_number_of_regions():
    assert position_count(77, 0) == 0
    assert position_count(77, 8) == 9 and position_count(374, 8) == 46
    assert position_count(10_000, 8) == POSITION_MAX
    assert position_count(3, 1) == 2  # never as many columns as regions
    assert position_count(5, 8) == 0


def test_laplacian_position_is_the_low_frequency_spectrum_without_the_trivial_vector():
    n = 12
    # a path, stored one way, with a duplicate and a self loop that must not count
    edges = np.hstack([_path(n), [[0, 4], [1, 4]]])
    got = laplacian_position(edges, n, 3)
    assert got.shape == (n, 3)
    np.testing.assert_allclose(got.T @ got, np.eye(3), atol=1e-10)
    degree = np.array([1] + [2] * (n - 2) + [1], float)
    np.testing.assert_allclose(got.T @ np.sqrt(degree), 0.0, atol=1e-10)  # orthogonal to the trivial one
    fiedler = got[:, 0] / np.sqrt(degree)  # the random-walk form of a path's first mode is monotone
    assert np.all(np.diff(fiedler) > 0) or np.all(np.diff(fiedler) < 0)
    assert np.all(got[0] > 0)  # sign convention: the first region's entries are non-zero here, so positive
    # the same graph stored another way gives the same columns
    np.testing.assert_allclose(laplacian_position(_path(n)[::-1], n, 3), got, atol=1e-10)


def test_sparse_solver_gives_the_dense_solver_columns(monkeypatch):
    n = 60
    dense = laplacian_position(_path(n), n, 4)
    monkeypatch.setattr(position, "DENSE_MAX", 10)
    sparse = laplacian_position(_path(n), n, 4)
    np.testing.assert_allclose(sparse, dense, atol=1e-7)


def test_components_and_isolated_regions_are_handled():
    # two paths of 5 and an isolated region
    edges = np.hstack([_path(5), _path(5) + 5])
    got = laplacian_position(edges, 11, 2)
    assert np.isfinite(got).all() and got.shape == (11, 2)
    with pytest.raises(ValueError, match="k=11"):
        laplacian_position(edges, 11, 11)


def test_append_position_scales_columns_like_the_embedding():
    rng = np.random.default_rng(0)
    emb = rng.normal(scale=3.0, size=(40, 6)).astype(np.float32)
    assert append_position(emb, _path(40), 0) is emb
    out = append_position(emb, _path(40), 8)
    assert out.shape == (40, 11) and out.dtype == np.float32
    np.testing.assert_array_equal(out[:, :6], emb)
    rms = np.sqrt(np.mean(emb.astype(np.float64).var(axis=0)))
    np.testing.assert_allclose(out[:, 6:].std(axis=0), rms, rtol=1e-4)


def test_output_position_widens_the_written_embedding_and_survives_a_save(tmp_path):
    from urbanrep.model import embed_graph
    from urbanrep.train import load_model, save_model

    data = random_region_graph(40, modalities=("poi", "landuse"), seed=3)
    mc = ModelConfig(ensemble=1, loss=LossConfig(fusion_weight=0.0), output_scales=0, output_position=8)
    res = train(data, mc, TrainConfig(epochs=2, seed=0, num_threads=1))
    assert res.embeddings.shape == (40, 64 + 5) == (40, res.model.written_channels(data))
    assert res.model.row_channels == 64
    save_model(res.model, tmp_path / "model.pt", TrainConfig())
    emb, _ = embed_graph(load_model(tmp_path / "model.pt"), data)
    np.testing.assert_allclose(emb.to_numpy(), res.embeddings, atol=1e-4)
    with pytest.raises(ConfigError, match="output_position"):
        ModelConfig(output_position=-1)
