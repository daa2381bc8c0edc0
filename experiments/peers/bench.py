"""Peer rows for experiments/benchmark.py: train (or reuse) each peer per seed, score it like urbanrep's rows.

The rows have the shape of the benchmark's learned rows (``kind`` ``"learned"``, ``paper``/``strict``
mean ± std over seeds, a ``train`` block with timings, losses and input retention), so they render in
every table of RESULTS.md without further changes. Wire-up in ``run_city`` (after the variants loop)::

    from experiments.peers.bench import peer_methods
    methods.update(peer_methods(data, bundle, args.peers, args.seeds, args.peer_epochs or args.epochs,
                                cache, strict_seeds))
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from urbanrep.atomic import write_parquet_atomic, write_text_atomic

log = logging.getLogger("experiments.peers.bench")


def train_peer(data: Any, peer: str, seed: int, epochs: int, cache: Path) -> tuple[pd.DataFrame, dict[str, Any], Path]:
    """Fit one peer embedding for one seed, or reuse the cached one (keyed by peer, seed, budget and graph shape)."""
    from experiments.benchmark import _code_version, _config_hash
    from experiments.peers import fit_peer

    key = _config_hash({"modalities": list(data.modalities), "n": int(len(data.region_ids))})
    path = cache / f"peer_{peer}_s{seed}_e{epochs}_{key}.parquet"
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists():
        return pd.read_parquet(path).set_index("region_id"), json.loads(meta_path.read_text()), path
    emb = fit_peer(peer, data, seed, epochs)
    meta = {**emb.attrs["peer"], "code": _code_version(), "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    cache.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(emb.reset_index(), path)
    write_text_atomic(meta_path, json.dumps(meta, indent=1, default=str))
    return emb, meta, path


def peer_methods(data: Any, bundle: Any, peers: Sequence[str], seeds: Sequence[int], epochs: int, cache: Path,
                 strict_seeds: int) -> dict[str, dict[str, Any]]:
    """Benchmark rows ``peer_<name>`` for each peer: every seed trained with ``epochs``, both protocols.

    Args:
        data: The city's region graph.
        bundle: The city bundle (targets for the evaluator).
        peers: Keys of :data:`experiments.peers.PEERS`.
        seeds: Training seeds.
        epochs: Fixed budget for every seed.
        cache: Folder of cached embeddings (the benchmark's ``OUT/embeddings/<city>``).
        strict_seeds: Shuffled splits of the strict protocol.
    """
    from experiments.benchmark import aggregate, cached_eval
    from experiments.peers import PEERS

    rows: dict[str, dict[str, Any]] = {}
    for peer in peers:
        per_seed: dict[str, list[dict[str, float]]] = {"paper": [], "strict": []}
        metas = []
        for s in seeds:
            emb, meta, path = train_peer(data, peer, s, epochs, cache)
            ev = cached_eval(path, emb, bundle, strict_seeds)
            meta["retention"] = ev["retention"]
            metas.append(meta)
            for p in ("paper", "strict"):
                per_seed[p].append(ev[p])
            log.info("peer %s seed %d: train %.0f s, paper %s", peer, s, meta["wall_s"],
                     {k: round(x, 3) for k, x in ev["paper"].items() if not k.endswith("_std")})
        views = metas[0]["views"]
        rows[f"peer_{peer}"] = {
            "kind": "learned",
            "description": f"{PEERS[peer].description}; views {', '.join(views)}; {epochs} epochs "
                           f"(paper: {PEERS[peer].default_epochs})",
            "paper": aggregate(per_seed["paper"]), "strict": aggregate(per_seed["strict"]),
            "train": {"seeds": list(seeds), "epochs": epochs, "peer": peer, "views": views,
                      "dropped_views": metas[0]["dropped_views"],
                      "trained_at": sorted({m.get("trained_at", "") for m in metas} - {""}),
                      "code": sorted({m.get("code", "unstamped") for m in metas}),
                      "wall_s_mean": float(np.mean([m["wall_s"] for m in metas])),
                      "cpu_s_mean": float(np.mean([m["cpu_s"] for m in metas])),
                      "loss_first_mean": float(np.mean([m["loss_first"] for m in metas])),
                      "loss_last_mean": float(np.mean([m["loss_last"] for m in metas])),
                      "loss_last10pct_mean": float(np.mean([m["loss_last10pct_mean"] for m in metas])),
                      "loss_prev10pct_mean": float(np.mean([m["loss_prev10pct_mean"] for m in metas])),
                      "input_retention": {k: float(np.mean([m["retention"][k] for m in metas]))
                                          for k in metas[0]["retention"]}}}
    return rows
