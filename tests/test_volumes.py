"""Region volumes in the written embedding (ModelConfig.output_volumes)."""

from __future__ import annotations

import copy

import numpy as np
import torch

from urbanrep.experts.testing import random_region_graph
from urbanrep.graphs.schema import REGION, feature_key, mask_key
from urbanrep.network import ModelConfig
from urbanrep.position import column_variances
from urbanrep.train import TrainConfig, load_model, save_model, train
from urbanrep.volumes import count_columns, region_volumes, volume_modalities
from urbanrep.written import written_transform


def _path(n: int) -> np.ndarray:
    return np.array([np.arange(n - 1), np.arange(1, n)])


def test_region_volumes_on_nyc(nyc) -> None:
    """Per modality with count columns: log1p(total) and total, centred over the regions with data."""
    mods = volume_modalities(nyc, nyc.modalities)
    assert "remote_sensing" not in mods and {"poi", "mobility", "landuse"} <= set(mods)
    vol = region_volumes(nyc, ("remote_sensing", "poi"))  # modalities without count columns are skipped
    assert vol.shape == (180, 2)
    x = nyc[REGION][feature_key("poi")].double().numpy()[:, count_columns(nyc, "poi")]
    total = np.expm1(x).sum(1)
    has = nyc[REGION][mask_key("poi")].numpy().astype(bool)
    np.testing.assert_allclose(vol[has, 1], total[has] - total[has].mean(), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(vol[has, 0], np.log1p(total[has]) - np.log1p(total[has]).mean(), rtol=1e-9, atol=1e-9)
    assert (vol[~has] == 0).all()
    assert region_volumes(nyc, ()).shape == (180, 0)


def test_region_volumes_without_feature_names() -> None:
    g = random_region_graph(12, ("poi",), seed=0)
    bare = copy.copy(g)
    bare.feature_names = {}
    assert region_volumes(bare, ("poi",)).shape == (12, 0)


def test_written_transform_appends_volumes_like_embedding_columns() -> None:
    rng = np.random.default_rng(2)
    emb = rng.normal(size=(40, 6)).astype(np.float32) * 3
    vol = rng.lognormal(size=(40, 2))
    vol -= vol.mean(0)
    plain = written_transform(emb, _path(40), 0.5, 1, 0)
    out = written_transform(emb, _path(40), 0.5, 1, 0, "none", vol)
    assert out.shape == (40, 14)
    np.testing.assert_allclose(out[:, :12], plain)
    rms = np.sqrt(column_variances(plain).mean())
    np.testing.assert_allclose(out[:, 12:].std(0), rms, rtol=1e-5)
    np.testing.assert_allclose(out[:, 12:] / out[:, 12:].std(0), vol / vol.std(0), rtol=1e-4, atol=1e-5)
    scaled = written_transform(emb, _path(40), 0.5, 1, 0, "unit_variance", vol)
    assert abs(column_variances(scaled).sum() - 1.0) < 1e-5


def test_output_volumes_widens_the_written_embedding_and_survives_a_save(tmp_path) -> None:
    from urbanrep.model import embed_graph

    data = random_region_graph(30, ("poi", "mobility", "remote_sensing"), seed=4)
    width = data[REGION][feature_key("poi")].size(1)
    data.feature_names = {"poi": [f"log1p:c{i}" for i in range(width)]}  # poi as counts, the others not
    mc = ModelConfig(ensemble=1)
    assert mc.output_volumes  # the default
    res = train(data, mc, TrainConfig(epochs=2, seed=0, num_threads=1))
    k = 2 * len(volume_modalities(data, res.modalities))
    assert k == 2 and res.embeddings.shape == (30, res.model.written_channels(data))
    off = ModelConfig(ensemble=1, output_volumes=False)
    assert res.model.written_channels(data) == k + train(data, off, TrainConfig(epochs=1, seed=0, num_threads=1)
                                                         ).model.written_channels(data)
    save_model(res.model, tmp_path / "model.pt", TrainConfig())
    emb, _ = embed_graph(load_model(tmp_path / "model.pt"), data)
    np.testing.assert_allclose(emb.to_numpy(), res.embeddings, atol=1e-4)
    assert torch.is_tensor(data[REGION][feature_key("poi")])


def test_a_constant_total_adds_no_columns() -> None:
    """Land-use shares with a constant ``log1p:total`` (the NYC tracts' input) tell no region apart."""
    g = random_region_graph(20, ("landuse", "poi"), seed=1)
    lu = g[REGION][feature_key("landuse")].clone()
    lu[:, -1] = float(np.log1p(1.0))
    g[REGION][feature_key("landuse")] = lu
    g.feature_names = {"landuse": [f"share:c{i}" for i in range(lu.size(1) - 1)] + ["log1p:total"],
                       "poi": [f"log1p:c{i}" for i in range(g[REGION][feature_key("poi")].size(1))]}
    assert volume_modalities(g, ("landuse", "poi")) == ["poi"]
    assert region_volumes(g, ("landuse", "poi")).shape == (20, 2)
