"""Training cost of the region model: seconds per epoch and peak memory, by number of regions.

Each size runs in its own subprocess (so peak RSS is that size's alone) and goes through the
real :func:`urbanrep.train.train` loop; epoch times come from the loop's own per-epoch log
records (``log_every=1``), so they include the three forward passes (the graph and its two
augmented views), the losses, the backward pass and the optimiser step.

* ``180`` is the default city, NYC-180, built by the ETL from the embedded bundle
  (``load_dataset(None)`` + ``build_graph``): POI, mobility (29,857 OD pairs, 7 time slices),
  land use, remote sensing.
* Any other size is a seeded :func:`urbanrep.experts.testing.random_region_graph` with the same
  modalities and feature widths as NYC-180 (POI 53, mobility 65, land use 12, remote sensing
  512, 7 slices), 20 OD pairs per origin, 10 similarity neighbours, 6 adjacency neighbours.
  ``--modalities`` changes the set (e.g. add ``road street_view``).

Peak memory is the process' maximum resident set size (``ru_maxrss``) after training, next to
the RSS with the graph loaded and nothing trained (Python, PyTorch and the graph).

Examples::

    python -m experiments.bench_train                                  # 180, 10k, 100k; 3 epochs
    python -m experiments.bench_train --regions 180 --epochs 300       # NYC-180 default run, full
    python -m experiments.bench_train --regions 10000 --threads 2 --json /tmp/bench_train.json

Timings on a machine shared with other busy processes are noisy; with 2 OpenMP threads on 2
busy cores they can be 10x worse than with ``--threads 1``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

NYC_DIMS = {"poi": 53, "mobility": 65, "landuse": 12, "remote_sensing": 512}
NYC_MODALITIES = ("poi", "mobility", "landuse", "remote_sensing")


def _rss_mb() -> float:
    """Peak RSS of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux
        return float("nan")


class _EpochClock(logging.Handler):
    """Time-stamps the training loop's per-epoch log records."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.stamps: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.msg, str) and record.msg.startswith("epoch "):
            self.stamps.append(time.perf_counter())


def run_one(num_regions: int, epochs: int, threads: int, modalities: tuple[str, ...], seed: int,
            checkpoint_experts: bool = False) -> dict[str, Any]:
    """Build the graph of one size, train ``epochs`` epochs, return the measurements."""
    import torch

    from urbanrep.network import ModelConfig
    from urbanrep.train import TrainConfig, train

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    if num_regions == 180 and modalities == NYC_MODALITIES:
        from urbanrep.datasets import load_dataset
        from urbanrep.graphs import GraphConfig, build_graph

        data, _ = build_graph(load_dataset(None), GraphConfig())
        source = "NYC-180 (embedded bundle, build_graph)"
    else:
        from urbanrep.experts.testing import random_region_graph

        data = random_region_graph(num_regions, modalities, seed=seed, feature_dims=NYC_DIMS, num_slices=7)
        source = "random_region_graph"
    graph_s = time.perf_counter() - t0
    edges = {et[1]: int(data[et].edge_index.size(1)) for et in data.edge_types}
    rss_graph = _current_rss_mb()

    clock = _EpochClock()
    logger = logging.getLogger("urbanrep.train")
    logger.addHandler(clock)
    logger.setLevel(logging.INFO)
    t1 = time.perf_counter()
    res = train(data, ModelConfig(checkpoint_experts=checkpoint_experts),
                TrainConfig(epochs=epochs, device="cpu", log_every=1, seed=seed, num_threads=threads))
    wall = time.perf_counter() - t1
    logger.removeHandler(clock)
    stamps = [t1, *clock.stamps]
    per_epoch = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    steady = per_epoch[1:] or per_epoch
    return {
        "regions": num_regions, "source": source, "modalities": list(modalities), "edges": edges,
        "epochs": epochs, "threads": threads, "checkpoint_experts": checkpoint_experts, "graph_s": round(graph_s, 3),
        "first_epoch_s": round(per_epoch[0], 4), "epoch_s_median": round(statistics.median(steady), 4),
        "train_wall_s": round(wall, 3), "loss_first": res.history[0]["total"], "loss_last": res.history[-1]["total"],
        "finite": bool(torch.isfinite(torch.as_tensor(res.embeddings)).all()),
        "rss_graph_mib": round(rss_graph, 1), "peak_rss_mib": round(_rss_mb(), 1),
    }


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--regions", type=int, nargs="+", default=[180, 10_000, 100_000],
                   help="sizes to run (180 = the real NYC-180 graph)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per size (the first one is reported apart)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--modalities", nargs="+", default=list(NYC_MODALITIES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-experts", action="store_true",
                   help="ModelConfig(checkpoint_experts=True): recompute experts in backward, less memory")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed per size")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    mods = tuple(args.modalities)
    if args.one:
        print(json.dumps(run_one(args.regions[0], args.epochs, args.threads, mods, args.seed,
                                 args.checkpoint_experts)))
        return 0
    import torch

    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, {args.threads} thread(s), {args.epochs} epoch(s), modalities {' '.join(mods)}"
          f"{', checkpoint_experts' if args.checkpoint_experts else ''}")
    print(f"{'regions':>8} {'edges':>10} {'graph s':>8} {'1st ep s':>9} {'epoch s':>8} {'rss graph':>10} "
          f"{'peak rss':>9} {'train s':>8}  loss first -> last")
    results = []
    for n in args.regions:
        cmd = [sys.executable, "-m", "experiments.bench_train", "--one", "--regions", str(n), "--epochs",
               str(args.epochs), "--threads", str(args.threads), "--seed", str(args.seed), "--modalities", *mods,
               *(["--checkpoint-experts"] if args.checkpoint_experts else [])]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, check=False)
        except subprocess.TimeoutExpired:
            print(f"{n:>8} timed out after {args.timeout:.0f} s")
            continue
        if proc.returncode != 0:
            print(f"{n:>8} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(r)
        print(f"{n:>8} {sum(r['edges'].values()):>10} {r['graph_s']:>8.2f} {r['first_epoch_s']:>9.3f} "
              f"{r['epoch_s_median']:>8.3f} {r['rss_graph_mib']:>8.0f}Mi {r['peak_rss_mib']:>7.0f}Mi {r['train_wall_s']:>8.1f}  "
              f"{r['loss_first']:.3f} -> {r['loss_last']:.3f}{'' if r['finite'] else '  NON-FINITE'}")
    if args.json is not None:
        from urbanrep.atomic import write_text_atomic

        write_text_atomic(args.json, json.dumps(results, indent=2))
    return 0 if len(results) == len(args.regions) else 1


if __name__ == "__main__":
    sys.exit(main())
