"""experiments/transform_looks.py: its variants of the written embedding and its count thinning."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from experiments.transform_looks import missing_share, thin_counts, written_variant
from tests.conftest import grid_bundle
from urbanrep.graphs import GraphConfig, build_graph
from urbanrep.graphs.schema import ADJACENT
from urbanrep.network import ModelConfig
from urbanrep.position import column_variances, position_count
from urbanrep.smoothing import scale_width
from urbanrep.volumes import region_volumes
from urbanrep.written import written_from_config, written_transform


def _grid(seed: int) -> tuple:
    """A 6 x 6 grid city's graph, the model config the variants transform (counts off: the looks' form),
    an as-trained ``[36, 16]`` embedding, its adjacency edges and its volumes."""
    bundle = grid_bundle(6)
    data, _ = build_graph(bundle, GraphConfig())
    mc = ModelConfig(output_counts="none")
    trained = np.random.default_rng(seed).normal(size=(len(data.region_ids), 16)).astype(np.float32)
    return data, mc, trained, data[ADJACENT].edge_index.numpy(), region_volumes(data, data.modalities, mc.volume_scales)


def test_variants_are_the_written_transform_or_its_documented_changes() -> None:
    data, mc, trained, ei, volumes = _grid(0)
    n = len(data.region_ids)
    assert np.array_equal(written_variant("default", trained, data, mc), written_from_config(trained, ei, mc, volumes))
    bare = written_transform(trained, ei, 0.0, 0, mc.output_position, mc.output_norm, volumes, mc.output_variance)
    np.testing.assert_allclose(written_variant("bare", trained, data, mc), bare, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(written_variant("s.5+hops", trained, data, mc),  # the default before round z
                               written_from_config(trained, ei, replace(mc, output_scale_regions=0), volumes),
                               rtol=1e-5, atol=1e-6)
    extra = position_count(n, mc.output_position) + volumes.shape[1]
    k = scale_width(n, 16, mc.output_scale_regions)
    for name, width in (("raw+hopr8", 16 + 2 * k), ("detail", 16 + 3 * k)):
        assert written_variant(name, trained, data, mc).shape == (n, width + extra), name
    for name, width in (("raw+hops", 3 * 16), ("raw+hopk4", 16 + 2 * 4), ("raw+joint4", 16 + 4), ("s.5+hopk8", 16 + 16),
                        ("flow4", 16 + 2 * scale_width(n, 16, mc.output_scale_regions) + 4), ("miss", 16), ("miss+hops", 3 * 16), ("od", 4 * 16), ("od-hop2", 3 * 16)):
        out = written_variant(name, trained, data, mc)
        assert out.shape == (n, width + extra), name
        assert np.isclose(column_variances(out).sum(), mc.output_variance, rtol=1e-4), name


def test_missing_share_moves_only_regions_without_data() -> None:
    data, _ = build_graph(grid_bundle(6), GraphConfig())
    mc = ModelConfig()
    missing = missing_share(data)
    assert 0 < (missing > 0).sum() < len(missing)  # the grid's random POIs leave some cells empty
    trained = np.random.default_rng(1).normal(size=(len(missing), 8)).astype(np.float32)
    own = written_variant("miss", trained, data, mc)
    bare = written_variant("bare", trained, data, mc)
    # the same rows up to the overall scale (its total variance is set last) where no data is missing
    c = float(np.median(own[missing == 0, :8] / bare[missing == 0, :8]))
    moved = np.abs(own[:, :8] - c * bare[:, :8]).max(1) > 1e-4 * np.abs(own[:, :8]).max()
    assert np.array_equal(moved, missing > 0)


def test_thinning_keeps_a_share_of_every_count() -> None:
    bundle = grid_bundle(6)
    before = bundle.aggregates["od"].table["value"].sum()
    thin_counts(bundle, 0.5)
    table = bundle.aggregates["od"].table
    assert isinstance(table, pd.DataFrame) and (table["value"] > 0).all()
    assert 0 < table["value"].sum() < before


def test_edge_aware_smoothing_is_the_default_where_neighbours_are_alike_and_keeps_an_outlier() -> None:
    from experiments.transform_looks import edge_aware_smoothing
    from urbanrep.smoothing import hop_operator, smooth_over_neighbours

    data, _ = build_graph(grid_bundle(6), GraphConfig())
    mc = ModelConfig()
    n = len(data.region_ids)
    ei = data[ADJACENT].edge_index.numpy()
    x = np.random.default_rng(1).normal(size=(n, 8)).astype(np.float32)
    # sharpness 0: every neighbour weighs 1, the default's half-smoothing
    np.testing.assert_allclose(edge_aware_smoothing(x, ei, 0.5, 0.0), smooth_over_neighbours(x, hop_operator(ei, n), 0.5),
                               rtol=1e-5, atol=1e-6)
    x[0] += 100.0  # a region unlike all its neighbours keeps (almost) its own row
    out = edge_aware_smoothing(x, ei, 0.5, 1.0)
    np.testing.assert_allclose(out[0], x[0], atol=1e-3)
    assert written_variant("edge", x, data, mc).shape == written_variant("default", x, data, mc).shape


def test_low_rank_block_has_the_principal_scores_distances_but_the_rows_columns() -> None:
    from experiments.transform_looks import low_rank
    from urbanrep.smoothing import leading_components

    x = np.random.default_rng(2).normal(size=(30, 12)).astype(np.float32)
    rec, scores = low_rank(x, 4), leading_components(x, 4)
    assert rec.shape == (30, 12) and np.linalg.matrix_rank(rec.astype(np.float64), tol=1e-4) == 4

    def dist(a: np.ndarray) -> np.ndarray:
        return np.linalg.norm(a[:, None, :] - a[None, :, :], axis=-1)

    np.testing.assert_allclose(dist(rec), dist(scores), rtol=1e-4, atol=1e-4)


def test_count_block_holds_the_count_columns_centred_and_the_count_variants_append_them() -> None:
    from experiments.transform_looks import count_block
    from urbanrep.volumes import count_columns

    bundle = grid_bundle(6)
    data, _ = build_graph(bundle, GraphConfig())
    mc = ModelConfig(output_counts="none")
    n = len(data.region_ids)
    block = count_block(data)
    assert block.shape[0] == n and 0 < block.shape[1] <= sum(len(count_columns(data, m)) for m in data.modalities)
    np.testing.assert_allclose(block.mean(0), 0.0, atol=1e-9)
    assert (count_block(data, scale="log").std(0) <= block.std(0) + 1e-9).all()  # log1p shrinks counts
    trained = np.random.default_rng(3).normal(size=(n, 16)).astype(np.float32)
    base = written_variant("default", trained, data, mc).shape[1]
    assert written_variant("counts", trained, data, mc).shape == (n, base + block.shape[1])
    eq = written_variant("eqvar", trained, data, mc)
    np.testing.assert_allclose(column_variances(eq), column_variances(eq).max(), rtol=1e-3)


def test_count_block_can_count_a_region_without_data_as_zero() -> None:
    from experiments.transform_looks import count_block

    data, _ = build_graph(grid_bundle(6), GraphConfig())
    block = count_block(data, scale="sqrt", missing_as_zero=True)
    np.testing.assert_allclose(block.mean(0), 0.0, atol=1e-9)
    assert block.shape == count_block(data, scale="sqrt").shape


def test_the_sqrtzero_look_is_what_model_output_counts_sqrt_writes() -> None:
    from urbanrep.volumes import region_counts

    data, mc, trained, ei, volumes = _grid(4)
    product = written_from_config(trained, ei, replace(mc, output_counts="sqrt"), volumes,
                                  region_counts(data, data.modalities, "sqrt"))
    np.testing.assert_allclose(written_variant("sqrtzero", trained, data, mc), product, rtol=1e-4, atol=1e-5)
    # with the counts on (the default since round aa), "default" is what the model writes, and the
    # count variants append their own columns to the default without them
    on = replace(mc, output_counts="sqrt", output_counts_skip=(), output_counts_shares=())
    np.testing.assert_allclose(written_variant("default", trained, data, on), product, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(written_variant("sqrtzero", trained, data, on), product, rtol=1e-4, atol=1e-5)
    # since round ab the default leaves mobility's count columns out: "sqrtzero-mob" is what it writes
    default = replace(mc, output_counts="sqrt", output_counts_skip=("mobility",))
    without = written_from_config(trained, ei, default, volumes,
                                  region_counts(data, [m for m in data.modalities if m != "mobility"], "sqrt"))
    assert "mobility" in data.modalities and without.shape[1] < product.shape[1]
    np.testing.assert_allclose(written_variant("default", trained, data, default), without, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(written_variant("sqrtzero-mob", trained, data, default), without, rtol=1e-4,
                               atol=1e-5)
    # since round ac they come back as shares of the region's trips: "mobshare" is what it writes
    shares = replace(mc, output_counts="sqrt", output_counts_skip=(), output_counts_shares=("mobility",))
    np.testing.assert_array_equal(written_variant("default", trained, data, shares),
                                  written_variant("mobshare", trained, data, shares))


def test_every_variant_writes_a_finite_embedding_with_one_row_per_region() -> None:
    """Each look in VARIANTS runs on a small city (the default's config, count columns on) and gives
    finite values; the count-column looks of the seventeenth session are their documented forms."""
    from experiments.transform_looks import (
        VARIANTS,
        count_block,
        hellinger_block,
        od_components,
        zero_volumes,
    )

    data, mc, trained, ei, volumes = _grid(5)
    on = replace(mc, output_counts="sqrt", output_counts_skip=("mobility",))
    n = len(data.region_ids)
    members = np.hstack([trained, trained[:, ::-1], trained + 0.1 * np.cos(np.arange(trained.size)).reshape(trained.shape)])
    side_by_side = replace(on, ensemble=3, ensemble_output="concat")
    regions = grid_bundle(6).regions  # for the looks that read the polygons
    for name in VARIANTS:
        got = written_variant(name, members, data, side_by_side) if name.startswith("cons") else \
            written_variant(name, trained, data, on, regions)
        assert got.shape[0] == n and np.isfinite(got).all(), name
    from urbanrep.network import align_members

    np.testing.assert_allclose(written_variant("cons", members, data, side_by_side),  # the default's, from the members
                               written_variant("default", align_members(members, 3), data, on), atol=1e-5)
    shared = replace(on, output_counts_skip=(), output_counts_shares=("mobility",))  # round ac's candidate
    np.testing.assert_array_equal(written_variant("mobshare", trained, data, on),
                                  written_variant("default", trained, data, shared))
    shares = hellinger_block(data)
    assert shares.shape[1] == count_block(data).shape[1] and np.allclose(shares.mean(0), 0.0)
    np.testing.assert_allclose(zero_volumes(data, mc.volume_scales).mean(0), 0.0, atol=1e-9)
    od = od_components(data, 4)
    assert od.shape == (n, 4 if "mobility" in data.modalities else 0)
    assert written_variant("nocounts", trained, data, on).shape[1] == written_from_config(trained, ei, on, volumes).shape[1]


def test_effective_rank_weighs_a_block_by_its_directions_not_its_width() -> None:
    from experiments.transform_looks import append_by_effective_rank, effective_rank

    rng = np.random.default_rng(2)
    emb = rng.normal(size=(200, 8)).astype(np.float32)
    one = rng.normal(size=(200, 1))
    copies = one @ np.ones((1, 12)) + 1e-9 * rng.normal(size=(200, 12))  # one direction written 12 times
    free = rng.normal(size=(200, 12))
    assert effective_rank(copies) < 1.01 and 10.0 < effective_rank(free) <= 12.0
    assert effective_rank(np.zeros((200, 3))) == 0.0 and effective_rank(one) == 1.0
    out = append_by_effective_rank(emb, [copies, free])
    per_column = float(np.mean(column_variances(emb)))
    assert out.shape == (200, 8 + 24) and np.array_equal(out[:, :8], emb)
    np.testing.assert_allclose(column_variances(out[:, 8:20]).sum(), per_column * effective_rank(copies), rtol=1e-4)
    np.testing.assert_allclose(column_variances(out[:, 20:]).sum(), per_column * effective_rank(free), rtol=1e-4)


def test_setting_variants_are_the_default_with_one_setting_changed() -> None:
    from experiments.transform_looks import SETTING_VARIANTS

    data, mc, trained, ei, _ = _grid(4)
    for name, change in SETTING_VARIANTS.items():
        changed = replace(mc, **change)
        volumes = region_volumes(data, data.modalities, changed.volume_scales)
        np.testing.assert_allclose(written_variant(name, trained, data, mc),
                                   written_from_config(trained, ei, changed, volumes), rtol=1e-5, atol=1e-6)


def test_polygon_looks_need_the_regions() -> None:
    data, mc, trained, ei, volumes = _grid(5)
    with pytest.raises(SystemExit, match="needs the region polygons"):
        written_variant("border", trained, data, mc)
    regions = grid_bundle(6).regions
    assert written_variant("border", trained, data, mc, regions).shape == written_variant("default", trained, data, mc).shape


def test_cosine_rate_decays_from_lr_to_the_floor() -> None:
    from experiments.lr_schedule_look import cosine_rate

    assert cosine_rate(1e-3, 1, 300, 0.0) == pytest.approx(1e-3)
    assert cosine_rate(1e-3, 300, 300, 0.1) == pytest.approx(1e-4)
    assert cosine_rate(1e-3, 150, 299, 0.0) == pytest.approx(5e-4)
    rates = [cosine_rate(1e-3, e, 50, 0.0) for e in range(1, 51)]
    assert all(a >= b for a, b in zip(rates, rates[1:], strict=False))


def test_mobility_rate_look_speeds_up_the_mobility_parameters_only() -> None:
    from experiments.mobility_rate_look import grouped_optimiser
    from urbanrep.experts.testing import random_region_graph
    from urbanrep.network import GraphMetadata, RegionModel
    from urbanrep.train import TrainConfig

    data = random_region_graph(12, ("poi", "mobility"), seed=0)
    model = RegionModel(ModelConfig(ensemble=1), GraphMetadata.from_data(data))
    opt = grouped_optimiser(model, TrainConfig(lr=1e-3), 10.0)
    rest, mobility = opt.param_groups
    assert rest["lr"] == 1e-3 and mobility["lr"] == pytest.approx(1e-2)
    named = {id(p): n for n, p in model.named_parameters()}
    assert mobility["params"] and all("mobility" in named[id(p)] or "mob_" in named[id(p)] for p in mobility["params"])
    assert len(rest["params"]) + len(mobility["params"]) == len(list(model.parameters()))
