"""Scale benchmark: ETL wall time and peak memory per stage, local vs Dask, plus mini-batch training.

Each (scale, engine) runs in a fresh child process, so peak RSS (VmHWM) is that run's own:

    python experiments/bench_scale.py --scale 10000:500000:500000 --scale 100000:2000000:2000000 \
        --engines local,dask --json /tmp/bench_scale.json
    python experiments/bench_scale.py --scale 100000:0:0 --train-only   # mini-batch training only

The synthetic city (``experiments/synthetic_city.py``) has POIs and trips only by default
(land use, roads, imagery off: ``--full`` turns them on). With ``--parquet DIR`` the city is
not held in memory: ``write_city_parquet`` streams it to a bundle under ``DIR`` (its own process,
timed apart: ``generate_s``), and the build reads the POI and trip layers from Parquet row group
by row group (``read_bundle`` keeps them on disk); ``--reuse`` skips generation when the bundle
exists:

    python experiments/bench_scale.py --parquet /tmp/cities --scale 1000000:50000000:50000000 \
        --engines local --json /tmp/bench_1m.json

The Dask engine runs on a ``LocalCluster`` of ``--workers`` workers x 1 thread (``--processes``
for worker processes; threads by default, shapely releases the GIL). In-process workers share
the client's region index, which the engine warms first (``RegionIndex.warm``: GEOS builds
prepared polygons' point locators lazily, not thread-safely), and run without a worker memory
limit (``--memory-limit``). ``graph_sha`` in the output proves both engines built the same
graph.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def _graph_sha(data: Any) -> str:
    import torch

    h = hashlib.sha256()
    for store in data.stores:
        for key in sorted(store.keys()):
            v = store[key]
            if torch.is_tensor(v):
                h.update(key.encode())
                h.update(v.cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _city_dir(args: argparse.Namespace, regions: int, pois: int, trips: int) -> Path:
    return Path(args.parquet) / f"city_{regions}_{pois}_{trips}_s{args.seed}"


def generate(args: argparse.Namespace, scale: str) -> dict[str, Any] | None:
    """Stream the city of ``scale`` to Parquet in its own process (timed apart from the build)."""
    r, q, t = (int(v) for v in scale.split(":"))
    path = _city_dir(args, r, q, t)
    if args.reuse and (path / "manifest.json").exists():
        return {"reused": str(path)}
    cmd = [sys.executable, "-m", "experiments.synthetic_city", "--regions", str(r), "--pois", str(q),
           "--trips", str(t), "--seed", str(args.seed), "--parquet", "--row-group-size", str(args.row_group_size),
           "--out", str(path)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    line = [x for x in proc.stdout.splitlines() if x.startswith("GENERATED ")]
    if proc.returncode or not line:
        print(f"{scale}: generation failed\n{proc.stderr[-3000:]}", file=sys.stderr)
        return None
    res: dict[str, Any] = json.loads(line[-1][len("GENERATED "):])
    res["process_wall_s"] = round(time.perf_counter() - t0, 2)
    res["bytes_on_disk"] = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    return res


def child(regions: int, pois: int, trips: int, engine: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    from experiments.synthetic_city import SyntheticCityConfig, make_city
    from urbanrep.graphs import GraphConfig, build_graph

    out: dict[str, Any] = {"regions": regions, "pois": pois, "trips": trips, "engine": engine}
    extra: dict[str, Any] = dict(num_landuse=2 * regions, road_spacing=150.0, num_street_view=regions,
                 remote_sensing_tiles=int(regions ** 0.5)) if args.full else \
        dict(num_landuse=0, road_spacing=0.0, num_street_view=0, remote_sensing_tiles=0)
    t0 = time.perf_counter()
    if args.parquet:
        from urbanrep.bundle import read_bundle
        from urbanrep.bundle.partitioned import ParquetLayer

        bundle = read_bundle(_city_dir(args, regions, pois, trips), partitioned=True)
        out["read_s"] = round(time.perf_counter() - t0, 2)
        out["partitioned"] = {lay: getattr(bundle, lay).row_groups for lay in ("pois", "trips")
                              if isinstance(getattr(bundle, lay), ParquetLayer)}
    else:
        bundle = make_city(SyntheticCityConfig(num_regions=regions, num_pois=pois, num_trips=trips, seed=args.seed,
                                               **extra))
        out["generate_s"] = round(time.perf_counter() - t0, 2)
    out["rss_after_generate_mb"] = _rss_mb("VmRSS")
    if not args.train_only:
        if engine == "dask":
            import urbanrep.graphs.build as build_module
            from urbanrep.engine import get_engine

            limit = args.memory_limit
            eng: Any = get_engine("dask", partitions=args.partitions, n_workers=args.workers, threads_per_worker=1,
                                  processes=args.processes, min_points=0,
                                  memory_limit=None if limit is None else (limit if limit == "auto" else int(limit)))
            t0 = time.perf_counter()
            eng.client  # noqa: B018 - start the cluster outside the timed build
            out["cluster_start_s"] = round(time.perf_counter() - t0, 2)
            build_module.engine_for = lambda config: eng  # type: ignore[assignment]
        t0 = time.perf_counter()
        data, report = build_graph(bundle, GraphConfig(engine=engine, dask_partitions=args.partitions))  # type: ignore[arg-type]
        out["build_wall_s"] = round(time.perf_counter() - t0, 2)
        out["timings_s"] = report["timings_s"]
        out["peak_rss_mb_by_stage"] = report["peak_rss_mb"]
        out["graph_sha"] = _graph_sha(data)
        if engine == "dask":
            eng.close()
    if args.train and engine == "local":
        from urbanrep.experts.base import ExpertConfig
        from urbanrep.experts.testing import random_region_graph
        from urbanrep.minibatch import MiniBatchConfig, train_minibatch
        from urbanrep.network import ModelConfig
        from urbanrep.train import TrainConfig

        del bundle
        g = random_region_graph(regions, ("poi", "mobility", "landuse"), seed=args.seed)
        t0 = time.perf_counter()
        res = train_minibatch(g, ModelConfig(expert=ExpertConfig(hidden_channels=32, out_channels=32)),
                              TrainConfig(epochs=1, num_threads=1),
                              MiniBatchConfig(batch_size=args.batch_size, num_neighbors=(5, 5, 3)))
        out["minibatch_epoch_s"] = round(time.perf_counter() - t0, 2)
        out["minibatch_loss"] = round(res.history[-1]["total"], 4)
    out["peak_rss_mb"] = _rss_mb("VmHWM")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", action="append", metavar="REGIONS:POIS:TRIPS",
                   help="repeatable; default 10000:500000:500000 and 100000:2000000:2000000")
    p.add_argument("--engines", default="local,dask")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--processes", action="store_true", help="Dask worker processes instead of threads")
    p.add_argument("--memory-limit", default=None, metavar="BYTES|auto",
                   help="LocalCluster memory limit per worker (default: none for in-process workers, whose "
                        "monitor would count the whole process, 'auto' for worker processes)")
    p.add_argument("--full", action="store_true", help="also land use, roads, street view, remote sensing")
    p.add_argument("--train", action="store_true", help="also one mini-batch epoch on a random graph of that size")
    p.add_argument("--train-only", action="store_true")
    p.add_argument("--batch-size", type=int, default=8192)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--parquet", default=None, metavar="DIR",
                   help="stream the city to a bundle under DIR and build from its Parquet layers (partitioned)")
    p.add_argument("--reuse", action="store_true", help="with --parquet: reuse an existing generated bundle")
    p.add_argument("--row-group-size", type=int, default=2_000_000)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        scale, engine = args.child.rsplit("@", 1)
        r, q, t = (int(v) for v in scale.split(":"))
        print("RESULT " + json.dumps(child(r, q, t, engine, args)), flush=True)
        return 0
    scales = args.scale or ["10000:500000:500000", "100000:2000000:2000000"]
    engines = ["local"] if args.train_only else args.engines.split(",")
    raw = list(argv if argv is not None else sys.argv[1:])
    passthrough = [a for i, a in enumerate(raw)
                   if not (a.startswith("--json") or (i and raw[i - 1] == "--json"))]
    results: list[dict[str, Any]] = []
    for scale in scales:
        if args.parquet:
            gen = generate(args, scale)
            if gen is None:
                continue
            print(f"{scale:>24} generated: {json.dumps(gen)}", flush=True)
            results.append({"scale": scale, "generate": gen})
        for engine in engines:
            cmd = [sys.executable, __file__, *passthrough, "--child", f"{scale}@{engine}"]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            if proc.returncode or not line:
                print(f"{scale} {engine}: failed\n{proc.stderr[-3000:]}", file=sys.stderr)
                continue
            res = json.loads(line[-1][len("RESULT "):])
            results.append(res)
            stages = ", ".join(f"{k} {v:.1f}s/{res['peak_rss_mb_by_stage'].get(k, float('nan')):.0f}MB"
                               for k, v in res.get("timings_s", {}).items())
            print(f"{scale:>24} {engine:>5}: " + (f"read {res['read_s']} s, " if "read_s" in res else "")
                  + f"build {res.get('build_wall_s', '-')} s, peak {res['peak_rss_mb']} MB, "
                  f"sha {res.get('graph_sha', '-')}"
                  + (f", mini-batch epoch {res['minibatch_epoch_s']} s" if "minibatch_epoch_s" in res else "")
                  + (f"\n{'':>32}{stages}" if stages else ""), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
