"""InducedSubgraphs gives what HeteroData.subgraph gives, tensor for tensor, in the original edge order."""

from __future__ import annotations

import numpy as np
import torch

from urbanrep.experts.testing import random_region_graph
from urbanrep.subgraph import InducedSubgraphs


def _same(a, b) -> None:
    assert a.node_types == b.node_types and a.edge_types == b.edge_types
    for key in (*a.node_types, *a.edge_types):
        sa, sb = a[key], b[key]
        assert sorted(sa.keys()) == sorted(sb.keys()), key
        for k in sa.keys():
            va, vb = sa[k], sb[k]
            if isinstance(va, torch.Tensor):
                assert va.dtype == vb.dtype and torch.equal(va, vb), (key, k)
            else:
                assert va == vb, (key, k)


def test_induced_subgraph_equals_heterodata_subgraph() -> None:
    g = random_region_graph(300, ("poi", "mobility", "landuse", "street_view"), seed=3, num_slices=3)
    induced = InducedSubgraphs(g)
    rng = np.random.default_rng(0)
    for size in (1, 17, 150, 300):
        regions = np.sort(rng.choice(300, size, replace=False))
        images = np.sort(rng.choice(g["image"].num_nodes, size, replace=False))
        subset = {"region": regions, "image": images}
        _same(induced(subset), g.subgraph({k: torch.from_numpy(v) for k, v in subset.items()}))
        _same(induced({"region": regions}), g.subgraph({"region": torch.from_numpy(regions)}))  # images kept whole
    _same(induced({"region": np.zeros(0, np.int64), "image": np.zeros(0, np.int64)}),
          g.subgraph({"region": torch.zeros(0, dtype=torch.long), "image": torch.zeros(0, dtype=torch.long)}))
    assert (induced._local["region"] == -1).all()  # scratch reset
