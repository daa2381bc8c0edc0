"""The quality checks' run cache (experiments/quality_checks.py) never hands back a stale embedding."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from urbanrep.experts.testing import random_region_graph
from urbanrep.network import ModelConfig
from urbanrep.position import position_count
from urbanrep.train import config_to_dict
from urbanrep.written import written_transform


def _cache_run(folder: Path, mc: ModelConfig, ids: list[str], drop: tuple[str, ...] = ()) -> pd.DataFrame:
    """A cached run of ``mc``; ``drop``: settings its meta lacks (written before they existed)."""
    emb = pd.DataFrame(np.arange(len(ids) * 5, dtype=np.float32).reshape(len(ids), 5) % 7,
                       index=pd.Index(ids, name="region_id"), columns=[f"emb_{i:03d}" for i in range(5)])
    emb.reset_index().to_parquet(folder / "default_s0_e300.parquet")
    recorded = {k: v for k, v in config_to_dict(mc).items() if k not in drop}
    (folder / "default_s0_e300.json").write_text(json.dumps({"weights": {"poi": 1.0}, "model_config": recorded}))
    return emb


def test_cached_runs_are_reused_extended_or_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from experiments.quality_checks import NotCached, _train

    data = random_region_graph(30, modalities=("poi", "landuse"), seed=1)
    ids = list(data.region_ids)
    emb = _cache_run(tmp_path, ModelConfig(), ids)
    got, weights = _train(data, None, 0, 300, tmp_path, "default", allowed=False)
    pd.testing.assert_frame_equal(got, emb)
    assert weights == {"poi": 1.0}
    # a run from before the positional columns and the overall scale: they are applied, nothing is trained
    default = ModelConfig()
    edges = data["region", "adjacent", "region"].edge_index.numpy()
    for norm in ("none", "unit_variance"):
        _cache_run(tmp_path, replace(default, output_position=0, output_norm="none"), ids)
        with_norm = replace(default, output_norm=norm)
        monkeypatch.setattr("urbanrep.network.ModelConfig", lambda mc=with_norm: mc)
        got, _ = _train(data, None, 0, 300, tmp_path, "default", allowed=False)
        assert got.shape == (30, 5 + position_count(30, default.output_position))
        want = written_transform(emb.loc[ids].to_numpy(), edges, 0.0, 0, default.output_position, norm,
                                 total_variance=default.output_variance)
        np.testing.assert_allclose(got.loc[ids].to_numpy(), want, rtol=1e-6)
        if norm == "none":
            np.testing.assert_array_equal(got.loc[ids].to_numpy()[:, :5], emb.loc[ids].to_numpy())
        else:
            assert abs(got.to_numpy(np.float64).var(axis=0).sum() - default.output_variance) < 1e-5
    # only the scale differs from a run with the positional columns: it is applied
    _cache_run(tmp_path, replace(default, output_norm="none"), ids)
    monkeypatch.setattr("urbanrep.network.ModelConfig", lambda: replace(default, output_norm="unit_variance"))
    got, _ = _train(data, None, 0, 300, tmp_path, "default", allowed=False)
    np.testing.assert_allclose(got.to_numpy(), emb.to_numpy() * np.sqrt(default.output_variance
                                                                         / emb.to_numpy(np.float64).var(axis=0).sum()),
                               rtol=1e-6)
    # a run scaled to unit total variance before output_variance existed: it is scaled to the default's
    _cache_run(tmp_path, replace(default, output_norm="unit_variance", output_variance=1.0), ids,
               drop=("output_variance",))
    monkeypatch.setattr("urbanrep.network.ModelConfig", lambda: default)
    got, _ = _train(data, None, 0, 300, tmp_path, "default", allowed=False)
    assert default.output_variance != 1.0
    np.testing.assert_allclose(got.to_numpy(), emb.to_numpy() * np.sqrt(default.output_variance
                                                                         / emb.to_numpy(np.float64).var(axis=0).sum()),
                               rtol=1e-6)
    monkeypatch.undo()
    # a run written before the hop blocks were cut to components: its hop blocks are inside it, so it is
    # written anew, never patched
    _cache_run(tmp_path, replace(ModelConfig(), output_scale_regions=0), ids, drop=("output_scale_regions",))
    with pytest.raises(NotCached):
        _train(data, None, 0, 300, tmp_path, "default", allowed=False)
    # a run trained differently is never reused
    _cache_run(tmp_path, replace(ModelConfig(), ensemble=1), ids)
    with pytest.raises(NotCached):
        _train(data, None, 0, 300, tmp_path, "default", allowed=False)
