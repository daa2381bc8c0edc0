"""Assertions shared by several test modules (graph identity, run identity)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from urbanrep.train import EMBEDDINGS, LOSS_CSV


class Killed(Exception):
    """Stands in for the process being killed."""


def assert_same_graph(a: Any, b: Any) -> None:
    """Every node/edge type, attribute and tensor (dtype included) of two graphs is identical."""
    assert a.node_types == b.node_types and a.edge_types == b.edge_types
    for store_a, store_b in zip(a.stores, b.stores, strict=True):
        assert set(store_a.keys()) == set(store_b.keys())
        for key, value in store_a.items():
            if torch.is_tensor(value):
                assert value.dtype == store_b[key].dtype and torch.equal(value, store_b[key]), key
            else:
                assert value == store_b[key], key


def assert_same_run(a: Any, b: Any, dir_a: Path, dir_b: Path) -> None:
    """Two training results and their run folders are bit-for-bit the same."""
    assert np.array_equal(a.embeddings, b.embeddings)
    assert np.array_equal(a.fusion_weights, b.fusion_weights)
    assert a.history == b.history
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k
    assert (dir_a / LOSS_CSV).read_text() == (dir_b / LOSS_CSV).read_text()
    pd.testing.assert_frame_equal(pd.read_parquet(dir_a / EMBEDDINGS), pd.read_parquet(dir_b / EMBEDDINGS))
