"""Save and load timings of region graph files (issue 19): NYC Manhattan-180 and a 100k-region city.

    python -m experiments.bench_graph_io                       # NYC-180 and 100k regions / 1M POIs
    python -m experiments.bench_graph_io --regions 100000 --pois 1000000 --repeat 5 --json /tmp/io.json

For each graph it times :func:`urbanrep.graphs.save_graph` (graph file + JSON manifest, both
atomic, schema validation included) and :func:`urbanrep.graphs.load_graph` (read + schema
validation), best and median of ``--repeat`` runs after one warm-up, and the file size. When
the installed urbanrep reads the pickle-free format, the old pickle path is timed as well in the
same process (``torch.save(HeteroData)`` / ``torch.load(weights_only=False)`` + validation, what
urbanrep <= 0.1 did), so both rows share the machine's load. Every load is checked to give back
the same graph, tensor for tensor. The 100k city has regions and POIs only (modest memory).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _rss_peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def _same(a: Any, b: Any) -> bool:
    import torch

    if a.node_types != b.node_types or a.edge_types != b.edge_types:
        return False
    for sa, sb in zip(a.stores, b.stores, strict=True):
        if set(sa.keys()) != set(sb.keys()):
            return False
        for k, v in sa.items():
            w = sb[k]
            if torch.is_tensor(v):
                if not (torch.is_tensor(w) and v.dtype == w.dtype and torch.equal(v, w)):
                    return False
            elif v != w or type(v) is not type(w):
                return False
    return True


def _time(fn: Callable[[], Any], repeat: int) -> tuple[list[float], Any]:
    fn()  # warm-up (page cache, lazy imports)
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


def _row(name: str, fmt: str, save: list[float], load: list[float], size: int, same: bool) -> dict[str, Any]:
    return {"graph": name, "format": fmt, "save_best_s": round(min(save), 4),
            "save_median_s": round(statistics.median(save), 4), "load_best_s": round(min(load), 4),
            "load_median_s": round(statistics.median(load), 4), "file_mb": round(size / 2**20, 2),
            "identical": same}


def bench(name: str, data: Any, folder: Path, repeat: int) -> list[dict[str, Any]]:
    """Time the current and (when it differs) the legacy pickle format on one graph."""
    import torch

    from urbanrep.graphs import io as graph_io
    from urbanrep.graphs.schema import validate_graph

    rows = []
    path = folder / f"{name}.pt"
    save, _ = _time(lambda: graph_io.save_graph(data, {"bundle": name}, path), repeat)
    load, back = _time(lambda: graph_io.load_graph(path), repeat)
    fmt = getattr(graph_io, "FILE_FORMAT", "pickle (torch.save HeteroData)")
    rows.append(_row(name, fmt, save, load, path.stat().st_size, _same(data, back)))
    if hasattr(graph_io, "FILE_FORMAT"):  # the pickle-free writer: time the old path beside it
        old = folder / f"{name}-legacy.pt"

        def old_save() -> None:
            validate_graph(data)
            torch.save(data, old)
            graph_io.manifest_path(old).write_text(json.dumps({"counts": "..."}))

        def old_load() -> Any:
            return validate_graph(torch.load(old, weights_only=False, map_location="cpu"))

        save, _ = _time(old_save, repeat)
        load, back = _time(old_load, repeat)
        rows.append(_row(name, "pickle (torch.save HeteroData), legacy", save, load, old.stat().st_size,
                         _same(data, back)))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regions", type=int, default=100_000, help="regions of the synthetic city (0: skip it)")
    parser.add_argument("--pois", type=int, default=1_000_000, help="POIs of the synthetic city")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per operation (after one warm-up)")
    parser.add_argument("--no-nyc", action="store_true", help="skip NYC Manhattan-180")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from urbanrep.graphs import GraphConfig, build_graph

    graphs: list[tuple[str, Any]] = []
    if not args.no_nyc:
        from urbanrep.datasets import load_dataset

        graphs.append(("nyc_manhattan180", build_graph(load_dataset("nyc_manhattan180"), GraphConfig())[0]))
    if args.regions:
        from experiments.synthetic_city import SyntheticCityConfig, make_city

        city = make_city(SyntheticCityConfig(num_regions=args.regions, num_pois=args.pois, seed=0))
        t0 = time.perf_counter()
        graphs.append((f"synthetic_{args.regions}", build_graph(city, GraphConfig())[0]))
        print(f"built the {args.regions}-region graph in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        del city
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench_graph_io-") as tmp:
        for name, data in graphs:
            rows.extend(bench(name, data, Path(tmp), args.repeat))
    header = "| graph | format | save best / median (s) | load best / median (s) | file (MB) | identical |"
    print(header)
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['graph']} | {r['format']} | {r['save_best_s']:.4f} / {r['save_median_s']:.4f} | "
              f"{r['load_best_s']:.4f} / {r['load_median_s']:.4f} | {r['file_mb']:.2f} | {r['identical']} |")
    print(f"peak RSS {_rss_peak_mb():.0f} MB; torch {torch.__version__}; {args.repeat} timed runs each")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
