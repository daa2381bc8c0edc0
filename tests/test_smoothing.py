"""Neighbourhood smoothing of the written embedding (ModelConfig.output_smoothing)."""

from __future__ import annotations

import numpy as np
import pytest

from urbanrep.errors import ConfigError
from urbanrep.experts.testing import random_region_graph
from urbanrep.fusion.losses import LossConfig
from urbanrep.graphs.schema import ADJACENT
from urbanrep.network import ModelConfig
from urbanrep.smoothing import (
    hop_operator,
    neighbour_mean_operator,
    neighbourhood_scales,
    smooth_over_neighbours,
)
from urbanrep.train import TrainConfig, train


def test_smoothing_mixes_each_row_with_its_neighbours_mean():
    # path 0 - 1 - 2, region 3 isolated; edges stored one way, one duplicated, one self loop
    edges = np.array([[0, 1, 1, 3], [1, 2, 2, 3]])
    emb = np.array([[0.0, 3.0], [6.0, 0.0], [3.0, 3.0], [9.0, 9.0]], np.float32)
    got = smooth_over_neighbours(emb, hop_operator(edges, 4), 0.5)
    want = np.array([
        0.5 * emb[0] + 0.5 * emb[1],
        0.5 * emb[1] + 0.5 * (emb[0] + emb[2]) / 2,
        0.5 * emb[2] + 0.5 * emb[1],
        emb[3],  # no neighbour: kept
    ])
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert smooth_over_neighbours(emb, hop_operator(edges, 4), 0.0) is emb
    p, degree = neighbour_mean_operator(edges, 4)
    np.testing.assert_array_equal(degree, [1, 2, 1, 0])
    np.testing.assert_allclose(np.asarray(p.sum(1)).ravel(), [1, 1, 1, 0])


def test_smoothing_is_region_permutation_equivariant():
    rng = np.random.default_rng(0)
    n = 30
    edges = rng.integers(0, n, size=(2, 80))
    emb = rng.normal(size=(n, 5)).astype(np.float32)
    perm = rng.permutation(n)
    inv = np.argsort(perm)
    got = smooth_over_neighbours(emb[perm], hop_operator(inv[edges], n), 0.25)
    np.testing.assert_allclose(got, smooth_over_neighbours(emb, hop_operator(edges, n), 0.25)[perm], rtol=1e-5, atol=1e-6)


def test_output_smoothing_applies_to_the_written_embedding_only(tmp_path):
    from urbanrep.model import embed_graph
    from urbanrep.train import load_model, save_model

    data = random_region_graph(40, modalities=("poi", "mobility"), seed=1)
    loss = LossConfig(fusion_weight=0.0)
    plain = train(data, ModelConfig(ensemble=2, loss=loss, output_smoothing=0.0, output_scales=0, output_position=0,
                                    output_norm="none"), TrainConfig(epochs=2, seed=0, num_threads=1))
    smooth = train(data, ModelConfig(ensemble=2, loss=loss, output_smoothing=0.25, output_scales=0, output_position=0,
                                     output_norm="none"), TrainConfig(epochs=2, seed=0, num_threads=1))
    # same training, the written embedding is the plain one smoothed
    assert [h["total"] for h in plain.history] == [h["total"] for h in smooth.history]
    edges = data[ADJACENT].edge_index.numpy()
    np.testing.assert_allclose(smooth.embeddings, smooth_over_neighbours(plain.embeddings, hop_operator(edges, 40), 0.25), atol=1e-6)
    save_model(smooth.model, tmp_path / "model.pt", TrainConfig())
    again = load_model(tmp_path / "model.pt")
    assert again.config.output_smoothing == 0.25
    emb, _ = embed_graph(again, data)
    np.testing.assert_allclose(emb.to_numpy(), smooth.embeddings, atol=1e-4)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 2.0])
def test_output_smoothing_validation(bad):
    with pytest.raises(ConfigError, match="output_smoothing"):
        ModelConfig(output_smoothing=bad)


def test_neighbourhood_scales_append_hop_means():
    edges = np.array([[0, 1, 3], [1, 2, 3]])  # path 0 - 1 - 2; 3 isolated (a self loop only)
    emb = np.array([[0.0], [6.0], [3.0], [9.0]], np.float32)
    got = neighbourhood_scales(emb, hop_operator(edges, 4), 2)
    one = np.array([[6.0], [1.5], [6.0], [9.0]])  # neighbour means; the isolated region keeps its own
    two = np.array([[1.5], [6.0], [1.5], [9.0]])
    assert got.shape == (4, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, np.hstack([emb, one, two]))
    assert neighbourhood_scales(emb, hop_operator(edges, 4), 0) is emb


def test_output_scales_widen_the_written_embedding(tmp_path):
    from urbanrep.model import embed_graph
    from urbanrep.train import load_model, save_model

    data = random_region_graph(30, modalities=("poi", "landuse"), seed=2)
    mc = ModelConfig(ensemble=1, loss=LossConfig(fusion_weight=0.0), output_smoothing=0.5, output_scales=1,
                     output_scale_regions=0, output_position=0)
    res = train(data, mc, TrainConfig(epochs=2, seed=0, num_threads=1))
    assert res.embeddings.shape == (30, 128) and res.model.row_channels == 64
    save_model(res.model, tmp_path / "model.pt", TrainConfig())
    emb, _ = embed_graph(load_model(tmp_path / "model.pt"), data)
    np.testing.assert_allclose(emb.to_numpy(), res.embeddings, atol=1e-4)
    with pytest.raises(ConfigError, match="output_scales"):
        ModelConfig(output_scales=-1)


def test_hop_blocks_cut_to_leading_components_on_a_small_city(tmp_path):
    """``output_scale_regions``: each hop block keeps one principal component per so many regions
    (at most its full width), the row stays as it is, and the layout says so."""
    from urbanrep.model import embed_graph
    from urbanrep.smoothing import compress_scales, leading_components, scale_width
    from urbanrep.train import load_model, save_model

    assert scale_width(77, 64, 8) == 9 and scale_width(600, 64, 8) == 64 and scale_width(5, 64, 8) == 0
    assert scale_width(77, 64, 0) == 64
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6)).astype(np.float32)
    pcs = leading_components(x, 3)
    centred = x - x.mean(0)
    assert pcs.shape == (40, 3) and np.allclose(pcs.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(pcs, axis=0), np.linalg.svd(centred, compute_uv=False)[:3], rtol=1e-5)
    assert ((pcs.astype(np.float64) ** 3).sum(0) > 0).all()  # signs fixed (third moment positive)
    np.testing.assert_array_equal(leading_components(-x, 3), pcs)  # the same columns whatever the sign of the input
    scaled = np.hstack([x, 2 * x, 3 * x])
    assert compress_scales(scaled, 6, 6) is scaled
    np.testing.assert_array_equal(compress_scales(scaled, 6, 0), x)
    cut = compress_scales(scaled, 6, 2)
    assert cut.shape == (40, 10)
    np.testing.assert_array_equal(cut[:, :6], x)
    np.testing.assert_allclose(cut[:, 6:8], leading_components(2 * x, 2), rtol=1e-6)

    data = random_region_graph(30, modalities=("poi", "landuse"), seed=2)
    mc = ModelConfig(ensemble=1, loss=LossConfig(fusion_weight=0.0), output_smoothing=0.5, output_scales=2,
                     output_scale_regions=8, output_position=0, output_volumes=False)
    res = train(data, mc, TrainConfig(epochs=2, seed=0, num_threads=1))
    assert res.embeddings.shape == (30, 64 + 2 * 3) == (30, res.model.written_channels(data))
    layout = res.model.written_layout(data)
    assert [w for _, w in layout] == [64, 3, 3] and "3 leading principal components" in layout[1][0]
    save_model(res.model, tmp_path / "model.pt", TrainConfig())
    emb, _ = embed_graph(load_model(tmp_path / "model.pt"), data)
    np.testing.assert_allclose(emb.to_numpy(), res.embeddings, atol=1e-4)
    with pytest.raises(ConfigError, match="output_scale_regions"):
        ModelConfig(output_scale_regions=-1)
