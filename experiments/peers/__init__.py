"""Peer region-embedding models re-implemented inside the harness (issue 14).

Each peer is trained target-free on the same region graph as urbanrep and returns one embedding
per region; the benchmark scores it with the same evaluator. ``fit_peer`` is the one entry point::

    from experiments.peers import PEERS, fit_peer
    emb = fit_peer("hafusion", data, seed=0, epochs=300)   # DataFrame [N, 144] indexed by region_id
    emb.attrs["peer"]                                        # views used/dropped, timings, losses

Runs are deterministic for a seed on CPU with one torch thread.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from experiments.peers.inputs import as_graph, embedding_frame


@dataclass(frozen=True)
class Peer:
    """A peer model: how to fit it and what it is.

    Attributes:
        fit: ``fit(data_or_bundle, seed, epochs) -> (embedding [N, D], report)``.
        default_epochs: The paper's training length.
        description: One line for tables.
    """

    fit: Callable[[Any, int, int | None], tuple[np.ndarray, dict[str, Any]]]
    default_epochs: int
    description: str


def _hafusion(data: Any, seed: int, epochs: int | None) -> tuple[np.ndarray, dict[str, Any]]:
    from experiments.peers.hafusion import fit_hafusion

    return fit_hafusion(data, seed, epochs)


def _hrep(data: Any, seed: int, epochs: int | None) -> tuple[np.ndarray, dict[str, Any]]:
    from experiments.peers.hrep import fit_hrep

    return fit_hrep(data, seed, epochs)


PEERS: dict[str, Peer] = {
    "hafusion": Peer(_hafusion, 2000, "HAFusion (ICDE 2024) re-implemented: intra-view region attention, "
                                      "dual-feature attentive fusion, mobility + POI/land-use similarity objectives"),
    "hrep": Peer(_hrep, 2000, "HREP (AAAI 2023) region-embedding module re-implemented: relation-aware GCN over "
                              "adjacency, POI-similarity and source/destination-flow relations (no prompt learning)"),
}


def fit_peer(name: str, data_or_bundle: Any, seed: int, epochs: int | None = None) -> pd.DataFrame:
    """Train peer ``name`` on a city and return its embedding.

    Args:
        name: A key of :data:`PEERS`.
        data_or_bundle: Region graph (``HeteroData`` from ``urbanrep.graphs.build_graph``) or ``CityBundle``.
        seed: Training seed.
        epochs: Training epochs (default: the peer's published length, ``PEERS[name].default_epochs``).

    Returns:
        ``[N, D]`` float32 table indexed by ``region_id`` (columns ``emb_000``...), in region order;
        ``attrs["peer"]`` holds the run report (views used and dropped, wall/CPU seconds, losses).
    """
    if name not in PEERS:
        raise KeyError(f"unknown peer {name!r}; available: {', '.join(PEERS)}")
    data = as_graph(data_or_bundle)
    emb, report = PEERS[name].fit(data, seed, epochs)
    frame = embedding_frame(data, emb)
    frame.attrs["peer"] = report
    return frame
