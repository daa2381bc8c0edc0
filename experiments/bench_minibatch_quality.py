"""Mini-batch vs full-batch training on NYC-180: same optimiser steps, same evaluation, several seeds.

    python experiments/bench_minibatch_quality.py --seeds 0 1 2 --steps 300 --batch-size 64

Full batch: ``train`` with ``epochs=steps``. Mini-batch: ``train_minibatch`` with enough epochs
for about ``steps`` optimiser steps over batches of ``batch_size`` seed regions (3-hop sampled
subgraphs). Both embeddings go through ``evaluate_embeddings`` (strict protocol, default
probes); the script prints R² per target (mean ± std over seeds).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--neighbors", type=int, nargs="+", default=[10, 10, 5])
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from urbanrep.datasets import load_dataset
    from urbanrep.evaluate import evaluate_embeddings
    from urbanrep.graphs import build_graph
    from urbanrep.minibatch import MiniBatchConfig, epochs_for_steps, train_minibatch
    from urbanrep.train import TrainConfig, train

    bundle = load_dataset(None)
    graph, _ = build_graph(bundle)
    n = graph["region"].num_nodes
    scores: dict[str, dict[str, list[float]]] = {"full": {}, "minibatch": {}}
    times: dict[str, list[float]] = {"full": [], "minibatch": []}
    for seed in args.seeds:
        for mode in ("full", "minibatch"):
            t0 = time.perf_counter()
            if mode == "full":
                res = train(graph, train_config=TrainConfig(epochs=args.steps, seed=seed, num_threads=1))
            else:
                epochs = epochs_for_steps(n, args.batch_size, args.steps)
                res = train_minibatch(graph, train_config=TrainConfig(epochs=epochs, seed=seed, num_threads=1),
                                      minibatch_config=MiniBatchConfig(batch_size=args.batch_size,
                                                                       num_neighbors=tuple(args.neighbors)))
            times[mode].append(time.perf_counter() - t0)
            report = evaluate_embeddings(res.embeddings_frame(), bundle)
            for target, m in report["tasks"].items():
                scores[mode].setdefault(target, []).append(float(m["r2"]))
            print(f"seed {seed} {mode}: " + ", ".join(f"{t} R2 {m['r2']:.3f}" for t, m in report["tasks"].items())
                  + f" ({times[mode][-1]:.0f} s)", flush=True)
    print("\nR2 mean ± std over seeds", args.seeds)
    for target in scores["full"]:
        f, b = np.array(scores["full"][target]), np.array(scores["minibatch"][target])
        print(f"{target:>24}: full {f.mean():.3f} ± {f.std():.3f}   mini-batch {b.mean():.3f} ± {b.std():.3f}")
    print(f"{'wall s / run':>24}: full {np.mean(times['full']):.0f}   mini-batch {np.mean(times['minibatch']):.0f}")
    if args.json:
        args.json.write_text(json.dumps({"scores": scores, "times": times, "args": vars(args)}, default=str, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
