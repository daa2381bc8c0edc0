"""Shared fixtures: the real data root (skipped when absent) and small real-format bundles."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import torch
from shapely.geometry import box

from urbanrep.bundle import Aggregate, CityBundle

# One intra-op thread: the test graphs are tiny, and two OpenMP threads on a busy 2-core CI machine
# spin against each other and run many times slower.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def nyc():
    """The default city's (NYC-180) region graph, built by the ETL (embedded copy or data root)."""
    from urbanrep.datasets import load_dataset
    from urbanrep.graphs import GraphConfig, build_graph

    data, _ = build_graph(load_dataset(None), GraphConfig())
    return data


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The shared data root, or skip: these tests read real data from ../shared/data."""
    from urbanrep.datasets import default_data_root

    root = default_data_root()
    if not (root / "nyc_manhattan180").is_dir():
        pytest.skip(f"data root {root} not present (set URBANREP_DATA to the shared data folder)")
    return root


@pytest.fixture(scope="session")
def nyc_bundle() -> CityBundle:
    """The NYC-180 bundle converted from the data root and validated; the copy embedded in the
    package (the same converter's output) when there is no data root, so these tests never skip."""
    from urbanrep.bundle import validate_bundle
    from urbanrep.converters import get_converter
    from urbanrep.datasets import default_data_root, load_dataset

    root = default_data_root()
    if not (root / "nyc_manhattan180").is_dir():
        return load_dataset("nyc_manhattan180")
    bundle, _ = validate_bundle(get_converter("nyc_manhattan180")(root / "nyc_manhattan180"))
    return bundle


@pytest.fixture(scope="session")
def nyc_bundle_dir(nyc_bundle: CityBundle, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """NYC-180 written as a bundle folder."""
    from urbanrep.bundle import write_bundle

    out = tmp_path_factory.mktemp("bundles") / "nyc_manhattan180"
    write_bundle(nyc_bundle, out)
    return out


def grid_bundle(n: int = 4, crs: str = "EPSG:32618", seed: int = 0) -> CityBundle:
    """A real-format n x n grid city of 1 km squares with POIs, an OD aggregate and a target."""
    rng = np.random.default_rng(seed)
    cells = [box(i * 1000, j * 1000, (i + 1) * 1000, (j + 1) * 1000) for j in range(n) for i in range(n)]
    regions = gpd.GeoDataFrame({"region_id": [f"r{k}" for k in range(n * n)]}, geometry=cells, crs=crs)
    pts = rng.uniform(0, n * 1000, size=(50, 2))
    pois = gpd.GeoDataFrame({"category": rng.choice(["food", "shop", "school"], 50)},
                            geometry=gpd.points_from_xy(pts[:, 0], pts[:, 1]), crs=crs)
    ids = regions["region_id"].to_numpy()
    od = pd.DataFrame({"origin_region": ids[:-1], "dest_region": ids[1:], "value": np.arange(1, n * n, dtype=float)})
    targets = pd.DataFrame({"region_id": ids, "target": "population", "value": rng.uniform(0, 100, n * n)})
    return CityBundle(name="grid", regions=regions, pois=pois,
                      aggregates={"od": Aggregate("od", "mobility", "matrix", od)}, targets=targets)
