"""Training cost of the region model: seconds and CPU seconds per epoch, peak memory, by size and mode.

Each size runs in its own subprocess (so peak RSS is that size's alone) and goes through the
real :func:`urbanrep.train.train` loop with ``train.mode`` ``full`` (one full-graph step per
epoch) or ``minibatch`` (:func:`urbanrep.minibatch.train_minibatch`, the mini-batch settings the
README documents: ``MiniBatchConfig()``'s defaults unless ``--set minibatch.KEY=VALUE`` says
otherwise). Epoch times come from the loop's own per-epoch log records (``log_every=1``), so
they include the forward passes, the losses, the backward pass and the optimiser step (and,
for mini-batches, the sampling); the reported figure is the median over the epochs after the
first. The model is the default :class:`~urbanrep.network.ModelConfig` (``ensemble=3``: three
independent members) unless ``--set model.ensemble=1`` (one member) or other ``--set model.*``.

* ``180`` is the default city, NYC-180, built by the ETL from the embedded bundle
  (``load_dataset(None)`` + ``build_graph``): POI, mobility (29,857 OD pairs, 7 time slices),
  land use, remote sensing.
* Any other size is a seeded :func:`urbanrep.experts.testing.random_region_graph` with the same
  modalities and feature widths as NYC-180 (POI 53, mobility 65, land use 12, remote sensing
  512, 7 slices), 20 OD pairs per origin, 10 similarity neighbours, 6 adjacency neighbours.
  ``--modalities`` changes the set (e.g. add ``road street_view``).

Memory: ``rss graph`` is the resident set with Python, PyTorch and the graph loaded and nothing
trained; ``peak rss`` the largest resident set from then on, through training and the final
embedding pass (the kernel's ``VmHWM``, restarted after the graph is built, since building a
large random graph can peak higher than training; ``ru_maxrss`` where that is not possible);
``KiB/region`` is ``(peak - rss graph) / regions``, the training's own memory per region.
``cpu s`` is the process' CPU seconds per epoch (user + system, median like ``epoch s``), less
sensitive than wall time to other processes on shared cores; ``sys %`` the share of the
training's CPU time spent in the kernel (page faults of freshly mapped memory; see
``urbanrep/allocator.py``); the 1-minute load average at the start of each size is printed
beside it.

Examples::

    python -m experiments.bench_train                                   # 180, 10k, 30k, 100k; full; 3 epochs
    python -m experiments.bench_train --regions 180 10000 --epochs 6 --set model.ensemble=1
    python -m experiments.bench_train --mode minibatch --regions 10000 --set minibatch.batch_size=4096
    python -m experiments.bench_train --regions 10000 --threads 2 --json /tmp/bench_train.json

Timings on a machine shared with other busy processes are noisy; with 2 OpenMP threads on 2
busy cores they can be 10x worse than with ``--threads 1``. Run with ``OMP_NUM_THREADS=1``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
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


def _reset_peak_rss() -> bool:
    """Restart the kernel's peak-RSS count (``VmHWM``) at the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _hwm_mb() -> float | None:
    """Peak RSS since the last :func:`_reset_peak_rss` (``VmHWM``), MiB; None where unknown."""
    from urbanrep.allocator import proc_kib

    kib = proc_kib("/proc/self/status", "VmHWM")
    return None if kib is None else kib / 1024.0


def _current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux
        return float("nan")


class _EpochClock(logging.Handler):
    """Time-stamps (wall and CPU) the training loops' per-epoch log records (full and mini-batch)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.stamps: list[tuple[float, float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.msg, str) and record.msg.startswith("epoch "):
            self.stamps.append((time.perf_counter(), time.process_time()))


def _load_average() -> float:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return float("nan")


def load_graph(num_regions: int, modalities: tuple[str, ...], seed: int) -> tuple[Any, str]:
    """NYC-180 from the embedded bundle (``180`` with NYC's modalities), else a seeded random graph."""
    if num_regions == 180 and modalities == NYC_MODALITIES:
        from urbanrep.datasets import load_dataset
        from urbanrep.graphs import GraphConfig, build_graph

        data, _ = build_graph(load_dataset(None), GraphConfig())
        return data, "NYC-180 (embedded bundle, build_graph)"
    from urbanrep.experts.testing import random_region_graph

    data = random_region_graph(num_regions, modalities, seed=seed, feature_dims=NYC_DIMS, num_slices=7)
    return data, "random_region_graph"


def run_one(num_regions: int, epochs: int, threads: int, modalities: tuple[str, ...], seed: int,
            mode: str = "full", overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """Build the graph of one size, train ``epochs`` epochs in ``mode``, return the measurements.

    Args:
        num_regions: Regions (180: NYC-180).
        epochs: Epochs to train (the first is reported apart).
        threads: Torch intra-op threads.
        modalities: Modalities of a random graph.
        seed: Graph and training seed.
        mode: ``"full"`` or ``"minibatch"`` (``train.mode``).
        overrides: ``section.key=value`` run-config overrides (``model.*``, ``train.*``,
            ``minibatch.*``), as ``urbanrep train --set`` takes them.
    """
    import torch

    from urbanrep.runconfig import load_run_config
    from urbanrep.train import train

    torch.set_num_threads(threads)
    load = _load_average()
    t0 = time.perf_counter()
    data, source = load_graph(num_regions, modalities, seed)
    graph_s = time.perf_counter() - t0
    edges = {et[1]: int(data[et].edge_index.size(1)) for et in data.edge_types}
    gc.collect()
    rss_graph = _current_rss_mb()
    build_peak = _rss_mb()  # building a large random graph can peak above training
    reset = _reset_peak_rss()
    forced = [f"train.mode={mode}", f"train.epochs={epochs}", "train.device=cpu", "train.log_every=1",
              f"train.seed={seed}", f"train.num_threads={threads}"]
    rc = load_run_config(None, [*overrides, *forced])

    clock = _EpochClock()
    logger = logging.getLogger("urbanrep")
    logger.addHandler(clock)
    logger.setLevel(logging.INFO)
    t1, c1 = time.perf_counter(), time.process_time()
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    res = train(data, rc.model, rc.train, minibatch_config=rc.minibatch)
    wall = time.perf_counter() - t1
    ru2 = resource.getrusage(resource.RUSAGE_SELF)
    logger.removeHandler(clock)
    stamps = [(t1, c1), *clock.stamps]
    per_epoch = [b[0] - a[0] for a, b in zip(stamps, stamps[1:], strict=False)]
    cpu_epoch = [b[1] - a[1] for a, b in zip(stamps, stamps[1:], strict=False)]
    steady, steady_cpu = per_epoch[1:] or per_epoch, cpu_epoch[1:] or cpu_epoch
    hwm = _hwm_mb() if reset else None
    peak = hwm if hwm is not None else _rss_mb()
    return {
        "regions": num_regions, "mode": mode, "source": source, "modalities": list(modalities), "edges": edges,
        "ensemble": rc.model.ensemble, "overrides": list(overrides),
        "minibatch": dataclasses.asdict(rc.minibatch) if mode == "minibatch" else None,
        "epochs": epochs, "threads": threads, "load_average": round(load, 2), "graph_s": round(graph_s, 3),
        "first_epoch_s": round(per_epoch[0], 4), "epoch_s_median": round(statistics.median(steady), 4),
        "epoch_cpu_s_median": round(statistics.median(steady_cpu), 4),
        "epoch_s_all": [round(x, 4) for x in per_epoch],
        "train_wall_s": round(wall, 3), "train_cpu_s": round(time.process_time() - c1, 3),
        "train_sys_s": round(ru2.ru_stime - ru1.ru_stime, 3), "train_minor_faults": ru2.ru_minflt - ru1.ru_minflt, "loss_first": res.history[0]["total"], "loss_last": res.history[-1]["total"],
        "finite": bool(torch.isfinite(torch.as_tensor(res.embeddings)).all()),
        "rss_graph_mib": round(rss_graph, 1), "peak_rss_mib": round(peak, 1), "graph_build_peak_mib": round(build_peak, 1),
        "peak_is_training_only": hwm is not None,
        "kib_per_region": round((peak - rss_graph) * 1024 / num_regions, 1),
    }


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--regions", type=int, nargs="+", default=[180, 10_000, 30_000, 100_000],
                   help="sizes to run (180 = the real NYC-180 graph)")
    p.add_argument("--mode", choices=("full", "minibatch"), default="full",
                   help="train.mode: full-graph steps or neighbour-sampled mini-batches")
    p.add_argument("--epochs", type=int, default=3, help="epochs per size (the first one is reported apart)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--modalities", nargs="+", default=list(NYC_MODALITIES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="run-config override, as for urbanrep train (e.g. model.ensemble=1, "
                        "minibatch.batch_size=4096, model.checkpoint_experts=true); repeatable")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed per size")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    mods = tuple(args.modalities)
    if args.one:
        print(json.dumps(run_one(args.regions[0], args.epochs, args.threads, mods, args.seed, args.mode,
                                 tuple(args.overrides))))
        return 0
    import torch

    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, {args.threads} thread(s), {args.epochs} epoch(s), mode {args.mode}, "
          f"modalities {' '.join(mods)}{', --set ' + ' '.join(args.overrides) if args.overrides else ''}")
    print(f"{'regions':>8} {'edges':>9} {'ens':>3} {'1st ep s':>8} {'epoch s':>8} {'cpu s':>7} {'sys %':>5} {'rss graph':>9} "
          f"{'peak rss':>9} {'KiB/region':>10} {'load':>5}  loss first -> last")
    results = []
    for n in args.regions:
        cmd = [sys.executable, "-m", "experiments.bench_train", "--one", "--regions", str(n), "--epochs",
               str(args.epochs), "--threads", str(args.threads), "--seed", str(args.seed), "--mode", args.mode,
               "--modalities", *mods, *(x for o in args.overrides for x in ("--set", o))]
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
        print(f"{n:>8} {sum(r['edges'].values()):>9} {r['ensemble']:>3} {r['first_epoch_s']:>8.3f} "
              f"{r['epoch_s_median']:>8.3f} {r['epoch_cpu_s_median']:>7.3f} "
              f"{100 * r['train_sys_s'] / max(r['train_cpu_s'], 1e-9):>5.1f} {r['rss_graph_mib']:>7.0f}Mi "
              f"{r['peak_rss_mib']:>7.0f}Mi {r['kib_per_region']:>10.1f} {r['load_average']:>5.2f}  "
              f"{r['loss_first']:.3f} -> {r['loss_last']:.3f}{'' if r['finite'] else '  NON-FINITE'}", flush=True)
    if args.json is not None:
        from urbanrep.atomic import write_text_atomic

        write_text_atomic(args.json, json.dumps(results, indent=2))
    return 0 if len(results) == len(args.regions) else 1


if __name__ == "__main__":
    sys.exit(main())
