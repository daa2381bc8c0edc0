"""Benchmark of the graph ETL (``urbanrep.graphs.build_graph``): wall time and peak memory per stage.

Cities:

* **NYC-180** from the shared data root (every graph variant: published aggregates, the raw-trip
  path, each modality alone); target: every graph within 5 s on 2 cores.
* **Synthetic cities** (``experiments/synthetic_city.py``) at increasing scale, given as
  ``REGIONS:POIS:TRIPS``, with every other modality sized from the region count (land-use parcels,
  a street grid, street-view points and remote-sensing tiles; see the flags). Target on 2 cores:
  100k regions with 10M POIs and 10M trips within 3 min and 10 GB peak; near-linear growth.

Each synthetic city runs in a fresh subprocess so that its peak memory is its own. The city is
generated in memory first; the peak-RSS counter is then reset (Linux ``/proc/self/clear_refs``)
so that the per-stage peaks (the process's high-water mark at the end of each stage, the bundle
included) measure the ETL, not the generator.

    python -m experiments.bench_etl                                  # NYC-180, 1k and 10k (about a minute)
    python -m experiments.bench_etl --no-nyc --scale 100000:1000000:1000000
    nohup python -m experiments.bench_etl --no-nyc --scale 100000:10000000:10000000 \\
        --json /tmp/bench_10m.json > /tmp/bench_10m.log 2>&1 &

Results are printed (and written as JSON with ``--json``); nothing is written into the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_SCALES = ("1000:100000:100000", "10000:1000000:1000000")


def _rss_mb(field: str) -> float | None:
    """``VmRSS`` / ``VmHWM`` of this process in MB (Linux), else ``None``."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def _load() -> float | None:
    """1-minute load average (``None`` where unknown)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _reset_peak() -> bool:
    """Reset the process's peak-RSS counter (``VmHWM``); False where the OS does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _parse_scale(text: str) -> tuple[int, int, int]:
    try:
        regions, pois, trips = (int(float(v)) for v in text.split(":"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--scale {text!r}: use REGIONS:POIS:TRIPS, e.g. 10000:1e6:1e6") from exc
    return regions, pois, trips


def run_synthetic(regions: int, pois: int, trips: int, args: argparse.Namespace) -> dict[str, Any]:
    """Generate one synthetic city and build its graph (in this process)."""
    from experiments.synthetic_city import SyntheticCityConfig, make_city
    from urbanrep.graphs import GraphConfig, build_graph, graph_counts

    tiles = int(round((regions * args.tiles_per_region) ** 0.5)) if args.tiles_per_region > 0 else 0
    city_cfg = SyntheticCityConfig(
        num_regions=regions, num_pois=pois, num_trips=trips,
        num_landuse=int(regions * args.landuse_per_region), road_spacing=args.road_spacing,
        num_street_view=int(regions * args.street_view_per_region), remote_sensing_tiles=tiles,
        feature_dim=args.feature_dim, seed=args.seed,
    )
    t0 = time.perf_counter()
    bundle = make_city(city_cfg)
    gen_s = time.perf_counter() - t0
    gen_peak = _rss_mb("VmHWM")
    reset = _reset_peak()
    rss_before = _rss_mb("VmRSS")
    load_before = _load()
    t0 = time.perf_counter()
    data, report = build_graph(bundle, GraphConfig())
    wall = time.perf_counter() - t0
    return {
        "city": f"synthetic {regions:,} regions / {pois:,} POIs / {trips:,} trips",
        "config": city_cfg.__dict__,
        "generate_s": round(gen_s, 2),
        "generate_peak_rss_mb": gen_peak,
        "peak_reset": reset,
        "rss_before_build_mb": rss_before,
        "build_wall_s": round(wall, 2),
        "build_peak_rss_mb": _rss_mb("VmHWM"),
        "timings_s": report["timings_s"],
        "cpu_s": report["cpu_s"],
        "peak_rss_mb": report["peak_rss_mb"],
        "load_avg": [load_before, _load()],
        "counts": graph_counts(data),
        "records": {"regions": regions, "pois": pois, "trips": trips,
                    "landuse": len(bundle.landuse) if bundle.landuse is not None else 0,
                    "roads": len(bundle.roads) if bundle.roads is not None else 0,
                    "street_view": len(bundle.street_view) if bundle.street_view is not None else 0,
                    "tiles": len(bundle.remote_sensing) if bundle.remote_sensing is not None else 0},
    }


def run_nyc(data_root: Path | None) -> list[dict[str, Any]]:
    """Every NYC-180 graph variant, timed (the converter's bundle, built in this process)."""
    from urbanrep.bundle import validate_bundle
    from urbanrep.converters import get_converter
    from urbanrep.datasets import default_data_root
    from urbanrep.graphs import GraphConfig, build_graph, graph_counts

    root = (data_root or default_data_root()) / "nyc_manhattan180"
    if not root.is_dir():
        print(f"NYC-180 skipped: {root} not found (set URBANREP_DATA or --data-root)", file=sys.stderr)
        return []
    bundle, _ = validate_bundle(get_converter("nyc_manhattan180")(root))
    variants: dict[str, Any] = {
        "aggregates (default)": GraphConfig(),
        "raw trips": GraphConfig(mobility_source="raw"),
        **{f"only {m}": GraphConfig(modalities=(m,)) for m in bundle.modalities},
    }
    out = []
    for name, cfg in variants.items():
        t0 = time.perf_counter()
        data, report = build_graph(bundle, cfg)
        out.append({"city": f"NYC-180 {name}", "build_wall_s": round(time.perf_counter() - t0, 3),
                    "build_peak_rss_mb": _rss_mb("VmHWM"), "timings_s": report["timings_s"],
                    "cpu_s": report["cpu_s"], "peak_rss_mb": report["peak_rss_mb"], "counts": graph_counts(data)})
    return out


def _child_args(args: argparse.Namespace, scale: str) -> list[str]:
    return [sys.executable, "-m", "experiments.bench_etl", "--child", scale,
            "--landuse-per-region", str(args.landuse_per_region), "--road-spacing", str(args.road_spacing),
            "--street-view-per-region", str(args.street_view_per_region),
            "--tiles-per-region", str(args.tiles_per_region), "--feature-dim", str(args.feature_dim),
            "--seed", str(args.seed)]


def _table(results: list[dict[str, Any]]) -> str:
    stages: list[str] = []
    for r in results:
        stages += [s for s in r["timings_s"] if s not in stages and s != "total"]
    name_w = max(len("stage"), *(len(s) for s in stages))
    lines = []
    for r in results:
        lines.append(f"\n{r['city']}")
        if "records" in r:
            lines.append("  inputs: " + ", ".join(f"{k} {v:,}" for k, v in r["records"].items())
                         + f"  (generated in {r['generate_s']} s, peak {r['generate_peak_rss_mb']} MB)")
        lines.append(f"  {'stage':<{name_w}}  {'wall s':>8}  {'cpu s':>8}  {'peak RSS MB':>11}")
        cpu = r.get("cpu_s", {})
        for s in stages:
            if s in r["timings_s"]:
                lines.append(f"  {s:<{name_w}}  {r['timings_s'][s]:>8.2f}  {cpu.get(s, float('nan')):>8.2f}  "
                             f"{r['peak_rss_mb'].get(s) or 0:>11.0f}")
        lines.append(f"  {'total':<{name_w}}  {r['timings_s']['total']:>8.2f}  {cpu.get('total', float('nan')):>8.2f}  "
                     f"{r['build_peak_rss_mb'] or 0:>11.0f}")
        if "load_avg" in r:
            lines.append(f"  load average before / after: {r['load_avg'][0]} / {r['load_avg'][1]} "
                         f"(other processes share the CPUs when it exceeds the core count, {os.cpu_count()})")
    return "\n".join(lines)


def _growth(results: list[dict[str, Any]]) -> str:
    syn = [r for r in results if "records" in r]
    if len(syn) < 2:
        return ""
    lines = ["\ngrowth (time per input record; near-linear = about constant):"]
    for r in syn:
        size = sum(r["records"].values())
        wall, cpu = r["timings_s"]["total"], r.get("cpu_s", {}).get("total", float("nan"))
        lines.append(f"  {r['city']:<60} {size:>12,} records  wall {wall:>7.2f} s ({1e6 * wall / size:>5.2f} us/record)"
                     f"  cpu {cpu:>7.2f} s ({1e6 * cpu / size:>5.2f} us/record)  peak {r['build_peak_rss_mb']} MB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print a table per city (and write JSON with ``--json``)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", action="append", type=str, metavar="REGIONS:POIS:TRIPS",
                   help=f"synthetic city size (repeatable; default {' '.join(DEFAULT_SCALES)}); 'none' for no city")
    p.add_argument("--no-nyc", action="store_true", help="skip NYC-180")
    p.add_argument("--data-root", type=Path, default=None, help="shared data root (default: urbanrep's)")
    p.add_argument("--landuse-per-region", type=float, default=2.0, help="land-use parcels per region (0 = none)")
    p.add_argument("--road-spacing", type=float, default=150.0, help="street-grid spacing in metres (0 = no roads)")
    p.add_argument("--street-view-per-region", type=float, default=1.0, help="street-view images per region")
    p.add_argument("--tiles-per-region", type=float, default=1.0, help="remote-sensing tiles per region")
    p.add_argument("--feature-dim", type=int, default=16, help="image feature dimension")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write all results to this JSON file")
    p.add_argument("--child", type=str, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:  # one synthetic city, result as one JSON line on stdout
        result = run_synthetic(*_parse_scale(args.child), args)
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    results: list[dict[str, Any]] = []
    if not args.no_nyc:
        results += run_nyc(args.data_root)
        if results:
            print(_table(results), flush=True)
    scales = [s for s in (args.scale or list(DEFAULT_SCALES)) if s != "none"]
    for scale in scales:
        _parse_scale(scale)
        t0 = time.perf_counter()
        proc = subprocess.run(_child_args(args, scale), capture_output=True, text=True,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"}, check=False)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            print(f"\nscale {scale} failed (exit {proc.returncode}) after {time.perf_counter() - t0:.0f} s:\n"
                  f"{proc.stderr[-3000:]}", file=sys.stderr, flush=True)
            continue
        result = json.loads(lines[-1][len("RESULT "):])
        results.append(result)
        print(_table([result]), flush=True)
    print(_growth(results), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
