"""Region volumes in the written embedding (ModelConfig.output_volumes)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from urbanrep.experts.testing import random_region_graph
from urbanrep.graphs.schema import REGION, feature_key, mask_key
from urbanrep.network import ModelConfig
from urbanrep.position import column_variances
from urbanrep.train import TrainConfig, load_model, save_model, train
from urbanrep.volumes import count_columns, region_volumes, volume_modalities, volume_names
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


def test_volume_scales_choose_the_columns(nyc) -> None:
    """``scales`` picks the columns and their order; the default is log then linear."""
    both = region_volumes(nyc, ("poi",))
    np.testing.assert_array_equal(region_volumes(nyc, ("poi",), ("log", "linear")), both)
    np.testing.assert_array_equal(region_volumes(nyc, ("poi",), ("linear",)), both[:, 1:])
    x = nyc[REGION][feature_key("poi")].double().numpy()[:, count_columns(nyc, "poi")]
    has = nyc[REGION][mask_key("poi")].numpy().astype(bool)
    root = np.sqrt(np.expm1(x).sum(1))[has]
    three = region_volumes(nyc, ("poi", "mobility"), ("sqrt", "log", "linear"))
    assert three.shape == (180, 6)
    np.testing.assert_allclose(three[has, 0], root - root.mean(), rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(three[:, 1:3], both)
    assert volume_names(nyc, ("poi", "mobility"), ("log",)) == ["poi total, log scale", "mobility total, log scale"]
    for bad in ((), ("log", "log"), ("cube",), "log"):
        with pytest.raises(ValueError, match="one or more distinct"):
            region_volumes(nyc, ("poi",), bad)


def test_volume_scales_in_the_config_and_a_saved_model(tmp_path) -> None:
    """A bad setting is a one-line config error; a model saved before the option reads back with log and linear."""
    from urbanrep.errors import ConfigError
    from urbanrep.runconfig import RunConfig
    from urbanrep.train import config_to_dict, model_config_from_dict

    with pytest.raises(ConfigError, match=r"volume_scales must be one or more distinct .*model.volume_scales=\[log\]"):
        ModelConfig(volume_scales=("log", "cube"))
    assert RunConfig.from_overrides("model.volume_scales=[log]").model.volume_scales == ("log",)
    old = config_to_dict(ModelConfig())
    del old["volume_scales"]
    assert model_config_from_dict(old).volume_scales == ("log", "linear")
    data = random_region_graph(30, ("poi", "mobility"), seed=4)
    data.feature_names = {m: [f"log1p:c{i}" for i in range(data[REGION][feature_key(m)].size(1))]
                          for m in ("poi", "mobility")}
    res = train(data, ModelConfig(ensemble=1, volume_scales=("log",), output_counts="none"),
                TrainConfig(epochs=1, seed=0, num_threads=1))
    assert res.embeddings.shape == (30, res.model.written_channels(data))
    assert res.model.written_channels(data) == res.model.row_channels + 2 * 3 + 2 + 3  # 2 hop blocks of 30 // 8 components, 2 volumes, 30 // 8 positions
    save_model(res.model, tmp_path / "m.pt", TrainConfig())
    assert load_model(tmp_path / "m.pt").config.volume_scales == ("log",)


def test_region_counts_are_the_count_columns_with_zero_for_a_region_without_records(nyc) -> None:
    """Every count column on the scale asked for, a masked region counting zero, centred, named."""
    from urbanrep.volumes import count_names, region_counts

    cols = count_columns(nyc, "poi")
    x = np.expm1(nyc[REGION][feature_key("poi")].double().numpy()[:, cols]).clip(min=0.0)
    has = nyc[REGION][mask_key("poi")].numpy().astype(bool)
    x[~has] = 0.0
    root = np.sqrt(x)
    got = region_counts(nyc, ("remote_sensing", "poi"))  # remote sensing has no count columns
    np.testing.assert_allclose(got, root - root.mean(0), rtol=1e-9, atol=1e-9)
    names = count_names(nyc, ("poi",), "log")
    assert len(names) == got.shape[1] and all(n.startswith("poi ") and n.endswith(", log scale") for n in names)
    assert region_counts(nyc, ("poi", "mobility"), "linear").shape[1] == len(count_names(nyc, ("poi", "mobility"), "linear"))
    with pytest.raises(ValueError, match="scale must be one of"):
        region_counts(nyc, ("poi",), "cube")


def test_output_counts_in_the_config_a_trained_model_and_a_saved_one(tmp_path) -> None:
    """A bad value is a one-line config error; the written width has one column per count column; a
    model saved before the option reads back without counts."""
    from urbanrep.errors import ConfigError
    from urbanrep.runconfig import RunConfig
    from urbanrep.train import config_to_dict, model_config_from_dict
    from urbanrep.volumes import count_names

    with pytest.raises(ConfigError, match=r"output_counts must be one of .*model.output_counts=sqrt"):
        ModelConfig(output_counts="cube")
    assert RunConfig.from_overrides("model.output_counts=sqrt").model.output_counts == "sqrt"
    old = config_to_dict(ModelConfig())
    del old["output_counts"]
    assert model_config_from_dict(old).output_counts == "none"
    data = random_region_graph(30, ("poi", "mobility"), seed=4)
    data.feature_names = {m: [f"log1p:c{i}" for i in range(data[REGION][feature_key(m)].size(1))]
                          for m in ("poi", "mobility")}
    res = train(data, ModelConfig(ensemble=1, output_counts="sqrt", output_counts_skip=()),
                TrainConfig(epochs=1, seed=0, num_threads=1))
    k = len(count_names(data, ("poi", "mobility"), "sqrt"))
    assert k > 0 and res.embeddings.shape == (30, res.model.written_channels(data))
    assert res.model.written_channels(data) == res.model.row_channels + 2 * 3 + 2 * 2 + 3 + k
    assert res.model.written_layout(data)[-1][0].startswith("count: mobility c")
    save_model(res.model, tmp_path / "m.pt", TrainConfig())
    assert load_model(tmp_path / "m.pt").config.output_counts == "sqrt"


def test_output_counts_skip_leaves_a_modalitys_count_columns_out(tmp_path) -> None:
    """``model.output_counts_skip`` drops the named modalities' count columns (their volumes stay), from
    the CLI's ``--set`` too; a bad value is a one-line config error; a saved model keeps it and one
    saved before the option reads back with none skipped."""
    from urbanrep.errors import ConfigError
    from urbanrep.runconfig import RunConfig
    from urbanrep.train import config_to_dict, model_config_from_dict
    from urbanrep.volumes import count_names, counted_modalities

    with pytest.raises(ConfigError, match=r"output_counts_skip must be a list of modalities"):
        ModelConfig(output_counts_skip=("trips",))
    assert RunConfig.from_overrides("model.output_counts_skip=[mobility]").model.output_counts_skip == ("mobility",)
    old = config_to_dict(ModelConfig())
    del old["output_counts_skip"]
    assert model_config_from_dict(old).output_counts_skip == ()
    skip = ModelConfig(ensemble=1, output_counts="sqrt", output_counts_skip=("mobility",))
    assert counted_modalities(("poi", "mobility", "landuse"), skip) == ["poi", "landuse"]
    data = random_region_graph(30, ("poi", "mobility"), seed=4)
    data.feature_names = {m: [f"log1p:c{i}" for i in range(data[REGION][feature_key(m)].size(1))]
                          for m in ("poi", "mobility")}
    res = train(data, skip, TrainConfig(epochs=1, seed=0, num_threads=1))
    k = len(count_names(data, ("poi",), "sqrt"))
    assert res.model.written_channels(data) == res.model.row_channels + 2 * 3 + 2 * 2 + 3 + k
    layout = [name for name, _ in res.model.written_layout(data)]
    assert not any(name.startswith("count: mobility") for name in layout)
    assert any(name.startswith("volume: mobility") for name in layout)  # its total stays
    assert res.embeddings.shape == (30, res.model.written_channels(data))
    save_model(res.model, tmp_path / "m.pt", TrainConfig())
    assert load_model(tmp_path / "m.pt").config.output_counts_skip == ("mobility",)


def test_output_counts_shares_writes_a_modalitys_composition(tmp_path) -> None:
    """``model.output_counts_shares`` writes the named modalities' count columns as the square root of
    their shares of the region's total (each region's row of them has unit sum of squares before
    centring; a region without records, or with none counted, is zeros), named as shares, from the CLI's ``--set`` too; a
    bad value is a one-line config error; a model saved before the option reads back with none."""
    from urbanrep.errors import ConfigError
    from urbanrep.runconfig import RunConfig
    from urbanrep.train import config_to_dict, model_config_from_dict
    from urbanrep.volumes import count_names, modality_counts, region_counts

    with pytest.raises(ConfigError, match=r"output_counts_shares must be a list of modalities"):
        ModelConfig(output_counts_shares="mobility")
    assert RunConfig.from_overrides("model.output_counts_shares=[mobility]").model.output_counts_shares == ("mobility",)
    old = config_to_dict(ModelConfig())
    del old["output_counts_shares"]
    assert model_config_from_dict(old).output_counts_shares == ()
    data = random_region_graph(30, ("poi", "mobility"), seed=4)
    data.feature_names = {m: [f"log1p:c{i}" for i in range(data[REGION][feature_key(m)].size(1))]
                          for m in ("poi", "mobility")}
    data[REGION][mask_key("mobility")] = torch.arange(30) >= 2  # two regions without trips
    data[REGION][feature_key("mobility")][:2] = 0.0
    counts, has = modality_counts(data, "mobility")
    shares = region_counts(data, ("mobility",), "sqrt", shares=("mobility",))
    raw = np.sqrt(counts / counts.sum(1, keepdims=True).clip(min=1e-300))
    np.testing.assert_allclose(shares, raw - raw.mean(0), atol=1e-12)
    some = counts.sum(1) > 0  # a region with records may have no trips too
    assert np.allclose((raw[some] ** 2).sum(1), 1.0) and not raw[~some].any() and not some[~has].any()
    poi = region_counts(data, ("poi", "mobility"), "sqrt", shares=("mobility",))[:, :len(count_names(data, ("poi",)))]
    np.testing.assert_array_equal(poi, region_counts(data, ("poi",), "sqrt"))  # the others as they were
    names = count_names(data, ("poi", "mobility"), "sqrt", shares=("mobility",))
    assert names[0].endswith("sqrt scale") and names[-1].endswith("sqrt share")
    mc = ModelConfig(ensemble=1, output_counts="sqrt", output_counts_skip=(), output_counts_shares=("mobility",))
    res = train(data, mc, TrainConfig(epochs=1, seed=0, num_threads=1))
    assert res.model.written_layout(data)[-1][0] == f"count: {names[-1]}"
    assert res.embeddings.shape == (30, res.model.written_channels(data))
    save_model(res.model, tmp_path / "m.pt", TrainConfig())
    assert load_model(tmp_path / "m.pt").config.output_counts_shares == ("mobility",)


def test_info_groups_one_modalitys_count_columns() -> None:
    """``urbanrep info`` lists a run of one modality's count columns as one block (the file names each)."""
    from urbanrep.written import grouped_columns, layout_columns

    blocks = layout_columns([("the row", 4), ("volume: poi total, log scale", 1), ("count: poi cafe, sqrt scale", 1),
                             ("count: poi shop, sqrt scale", 1), ("count: mobility out_flow, sqrt scale", 1)])
    got = grouped_columns(blocks)
    assert [b["holds"] for b in got] == ["the row", "volume: poi total, log scale",
                                         "count: 2 poi count columns, sqrt scale (each named in the file)",
                                         "count: mobility out_flow, sqrt scale"]
    assert (got[2]["first"], got[2]["last"]) == ("emb_005", "emb_006")
    assert grouped_columns(blocks[:2]) == blocks[:2]
