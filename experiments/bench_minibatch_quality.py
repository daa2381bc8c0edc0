"""Mini-batch vs full-batch training quality: same model, same epoch budget, both protocols, several seeds.

    python -m experiments.bench_minibatch_quality --city singapore --seeds 0 1 2 --out /tmp/mbq
    python -m experiments.bench_minibatch_quality --city nyc180 --candidates full partition --out /tmp/mbq

Every candidate trains the default model (``ModelConfig()``: 3 members) for ``--epochs`` epochs
(default 300, the run default) through the real :func:`urbanrep.train.train`. Mini-batch
candidates are scaled to the city so that an epoch has ``--batches`` batches (as a 10k-region
city has with ``batch_size`` 1024 and ``partition_size`` 256: about 10 batches of 4 blocks each;
on cities of a few hundred regions the defaults would make one batch, which *is* full-batch
training):

* ``full``: full-graph training (``train.mode=full``);
* ``partition``: the partition sampler, ``batch_size = ceil(N / batches)``, 4 blocks per batch, no halo;
* ``partition_1block``: the same with one block per batch (no random union of blocks);
* ``partition_halo``: ``partition`` plus a sampled 1-hop halo (5 neighbours per seed; losses on seeds);
* ``neighbor``: the neighbour sampler, ``batch_size = ceil(N / batches)``, fan-out 3/2, loss on
  the whole sampled subgraph (the sampler before the partition sampler, with a small fan-out);
* ``default``: ``MiniBatchConfig()`` as it is, not scaled (``--batches`` is ignored; on a city of
  at most ``batch_size`` regions this is full-batch training);
* ``partition_quarter_loss``: ``partition`` with the losses on a quarter of each batch's seeds
  (``loss_nodes``; the share the automatic rule gives at 100k regions: 256 of 1024; at 10k it is
  648 of 1024). On small cities the automatic rule takes every seed, so ``partition`` alone
  does not show what the cap costs.

Embeddings are cached under ``--out`` (one Parquet per city, candidate and seed; a rerun reuses
them) and scored like ``experiments/benchmark.py``: the paper protocol and the strict protocol
(10 shuffled split seeds). The script prints mean ± std over training seeds per task and protocol,
with mean training wall and CPU seconds, and writes ``--out/<city>.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CANDIDATES = ("full", "partition", "partition_1block", "partition_halo", "neighbor", "partition_quarter_loss",
              "default")


def minibatch_config(candidate: str, n: int, batches: int) -> Any:
    """The :class:`MiniBatchConfig` of a candidate on a city of ``n`` regions (None: full batch)."""
    from urbanrep.minibatch import MiniBatchConfig

    size = math.ceil(n / batches)
    if candidate == "full":
        return None
    if candidate == "default":
        return MiniBatchConfig()
    if candidate == "partition":
        return MiniBatchConfig(batch_size=size, partition_size=max(1, size // 4))
    if candidate == "partition_1block":
        return MiniBatchConfig(batch_size=size, partition_size=size)
    if candidate == "partition_halo":
        return MiniBatchConfig(batch_size=size, partition_size=max(1, size // 4), num_neighbors=(5,))
    if candidate == "neighbor":
        return MiniBatchConfig(sampler="neighbor", batch_size=size, num_neighbors=(3, 2))
    if candidate == "partition_quarter_loss":
        return MiniBatchConfig(batch_size=size, partition_size=max(1, size // 4), loss_nodes=max(2, size // 4))
    raise ValueError(f"unknown candidate {candidate!r}; choose from {CANDIDATES}")


def train_one(data: Any, candidate: str, seed: int, epochs: int, batches: int, cache: Path) -> tuple[pd.DataFrame, dict]:
    """Train (or reuse) one candidate and seed; returns the embedding and its timing record."""
    import torch

    from urbanrep.atomic import write_parquet_atomic, write_text_atomic
    from urbanrep.network import ModelConfig
    from urbanrep.train import TrainConfig, embeddings_frame, train

    path = cache / f"{candidate}_b{batches}_s{seed}_e{epochs}.parquet"
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists():
        return pd.read_parquet(path).set_index("region_id"), json.loads(meta_path.read_text())
    n = int(data["region"].num_nodes)
    bc = minibatch_config(candidate, n, batches)
    tc = TrainConfig(epochs=epochs, seed=seed, num_threads=1, mode="full" if bc is None else "minibatch")
    torch.set_num_threads(1)
    t0, c0 = time.perf_counter(), time.process_time()
    res = train(data, ModelConfig(), tc, minibatch_config=bc)
    meta = {"candidate": candidate, "seed": seed, "epochs": epochs, "batches": batches,
            "minibatch": None if bc is None else {k: getattr(bc, k) for k in
                                                  ("sampler", "batch_size", "partition_size", "num_neighbors")},
            "wall_s": round(time.perf_counter() - t0, 1), "cpu_s": round(time.process_time() - c0, 1),
            "loss_last": res.history[-1]["total"]}
    emb = embeddings_frame(res.region_ids, res.embeddings)
    cache.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(emb.reset_index(), path)
    write_text_atomic(meta_path, json.dumps(meta, indent=1, default=list))
    return emb, meta


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--city", default="singapore", help="a city of experiments/benchmark.py (nyc180, chicago77, "
                   "singapore, nyc_tracts)")
    p.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=CANDIDATES)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--batches", type=int, default=3, help="mini-batches per epoch the candidates are scaled to")
    p.add_argument("--strict-seeds", type=int, default=10)
    p.add_argument("--data-root", type=Path, default=None)
    p.add_argument("--out", type=Path, required=True, help="cache and result folder")
    args = p.parse_args(argv)
    from experiments.benchmark import CITIES, aggregate, cached_json, evaluate_all, load_city
    from urbanrep.atomic import write_text_atomic
    from urbanrep.graphs import GraphConfig, build_graph

    city = CITIES[args.city]
    bundle = load_city(city, args.data_root)
    data, _ = build_graph(bundle, GraphConfig())
    n = int(data["region"].num_nodes)
    print(f"{city.title}: {n} regions, modalities {list(data.modalities)}; {args.epochs} epochs, seeds {args.seeds}, "
          f"mini-batch candidates at {args.batches} batches per epoch", flush=True)
    results: dict[str, Any] = {}
    for cand in args.candidates:
        per = {"paper": [], "strict": []}
        metas = []
        for seed in args.seeds:
            emb, meta = train_one(data, cand, seed, args.epochs, args.batches, args.out / args.city)
            ev = cached_json(args.out / args.city / f"{cand}_b{args.batches}_s{seed}_e{args.epochs}.eval.json",
                             partial(evaluate_all, emb, bundle, args.strict_seeds))
            metas.append(meta)
            for proto in per:
                per[proto].append(ev[proto])
            print(f"  {cand} seed {seed}: {meta['wall_s']:.0f} s wall, {meta['cpu_s']:.0f} CPU s; strict "
                  + ", ".join(f"{k} {v:.3f}" for k, v in ev["strict"].items() if not k.endswith("_std")), flush=True)
        results[cand] = {"config": metas[0]["minibatch"], "wall_s": float(np.mean([m["wall_s"] for m in metas])),
                         "cpu_s": float(np.mean([m["cpu_s"] for m in metas])),
                         **{proto: aggregate(per[proto]) for proto in per}}
    keys = [k for k in results[args.candidates[0]]["strict"] if k != "n_seeds" and not k.endswith("_std")]
    for proto in ("strict", "paper"):
        print(f"\n{proto} protocol, mean ± std over {len(args.seeds)} training seeds")
        print("| candidate | " + " | ".join(keys) + " | CPU s / run |")
        print("|---" * (len(keys) + 2) + "|")
        for cand, r in results.items():
            print(f"| {cand} | " + " | ".join(f"{r[proto][k]:.3f} ± {r[proto][k + '_std']:.3f}" for k in keys)
                  + f" | {r['cpu_s']:.0f} |")
    write_text_atomic(args.out / f"{args.city}.json", json.dumps({"city": args.city, "n_regions": n, "args": {
        k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "results": results}, indent=1,
        default=list))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
