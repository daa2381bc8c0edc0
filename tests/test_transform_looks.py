"""experiments/transform_looks.py: its variants of the written embedding and its count thinning."""

from __future__ import annotations

import numpy as np
import pandas as pd

from experiments.transform_looks import thin_counts, written_variant
from tests.conftest import grid_bundle
from urbanrep.graphs import GraphConfig, build_graph
from urbanrep.graphs.schema import ADJACENT
from urbanrep.network import ModelConfig
from urbanrep.position import column_variances, position_count
from urbanrep.volumes import region_volumes
from urbanrep.written import written_from_config, written_transform


def test_variants_are_the_written_transform_or_its_documented_changes() -> None:
    data, _ = build_graph(grid_bundle(6), GraphConfig())
    mc = ModelConfig()
    n = len(data.region_ids)
    trained = np.random.default_rng(0).normal(size=(n, 16)).astype(np.float32)
    ei = data[ADJACENT].edge_index.numpy()
    volumes = region_volumes(data, data.modalities, mc.volume_scales)
    assert np.array_equal(written_variant("default", trained, data, mc), written_from_config(trained, ei, mc, volumes))
    bare = written_transform(trained, ei, 0.0, 0, mc.output_position, mc.output_norm, volumes, mc.output_variance)
    np.testing.assert_allclose(written_variant("bare", trained, data, mc), bare, rtol=1e-5, atol=1e-6)
    extra = position_count(n, mc.output_position) + volumes.shape[1]
    for name, width in (("raw+hops", 3 * 16), ("raw+hopk4", 16 + 2 * 4), ("raw+joint4", 16 + 4), ("s.5+hopk8", 16 + 16),
                        ("flow4", 3 * 16 + 4)):
        out = written_variant(name, trained, data, mc)
        assert out.shape == (n, width + extra), name
        assert np.isclose(column_variances(out).sum(), mc.output_variance, rtol=1e-4), name


def test_thinning_keeps_a_share_of_every_count() -> None:
    bundle = grid_bundle(6)
    before = bundle.aggregates["od"].table["value"].sum()
    thin_counts(bundle, 0.5)
    table = bundle.aggregates["od"].table
    assert isinstance(table, pd.DataFrame) and (table["value"] > 0).all()
    assert 0 < table["value"].sum() < before
