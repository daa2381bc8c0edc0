"""Speed of the streaming OpenStreetMap reader (urbanrep.osm.read_osm) on the extracts in the data root.

For each extract: the number of nodes, ways and relations in the file (one bare osmium pass,
not timed with the reader), then the best of ``--repeat`` timed :func:`read_osm` passes with
every layer and the vocabulary, and ``urbanrep prepare osm``'s whole path (regions h3:9 +
read + bundle) once. Prints file nodes per wall second and per CPU second (all threads; the
figure to compare on a busy machine), POIs per second and the wall times.

    python -m experiments.bench_osm [--data-root DIR] [--repeat 3] [--tile 8] [PBF ...]

The real extracts at hand are small (Helsinki: 24k nodes), so fixed costs (thread pool, two
passes for areas) weigh on their rate. ``--tile N`` also measures a larger file made of N x N
copies of the Helsinki extract side by side (coordinates shifted by the extract's size, ids
offset per copy: real OSM content, N² times the objects; written to a temporary folder).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from urbanrep.datasets import resolve_data_root

DEFAULT = ("helsinki_osm/Helsinki.osm.pbf", "sao_paulo/spo_osm.pbf")


def count_objects(path: Path) -> dict[str, int]:
    """Nodes, ways and relations in the file (osmium, no location cache)."""
    import osmium

    class Counter(osmium.SimpleHandler):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.n = self.w = self.r = 0

        def node(self, _: object) -> None:
            self.n += 1

        def way(self, _: object) -> None:
            self.w += 1

        def relation(self, _: object) -> None:
            self.r += 1

    c = Counter()
    c.apply_file(str(path))
    return {"nodes": c.n, "ways": c.w, "relations": c.r}


def tiled_extract(src: Path, n: int, out: Path) -> Path:
    """Write ``n x n`` shifted copies of ``src`` (nodes, then ways, then relations) to ``out``."""
    import osmium

    from urbanrep.osm import header_bbox

    box = header_bbox(src)
    assert box is not None, f"{src} has no header bbox"
    dx, dy = box[2] - box[0], box[3] - box[1]
    step = 10 ** 11  # id offset per copy (above any OSM id)
    tiles = [(i, j) for i in range(n) for j in range(n)]
    if out.exists():
        out.unlink()
    writer = osmium.SimpleWriter(str(out))
    try:
        for kind in (osmium.osm.NODE, osmium.osm.WAY, osmium.osm.RELATION):
            for t, (i, j) in enumerate(tiles):
                off = t * step
                for obj in osmium.FileProcessor(str(src), kind):
                    if obj.is_node():
                        loc = obj.location
                        writer.add_node(obj.replace(id=obj.id + off, location=(loc.lon + i * dx, loc.lat + j * dy)))
                    elif obj.is_way():
                        writer.add_way(obj.replace(id=obj.id + off, nodes=[r.ref + off for r in obj.nodes]))
                    else:
                        members = [(m.type, m.ref + off, m.role) for m in obj.members]
                        writer.add_relation(obj.replace(id=obj.id + off, members=members))
    finally:
        writer.close()
    return out


def bench(path: Path, repeat: int) -> dict[str, float]:
    from urbanrep.osm import read_osm
    from urbanrep.prepare import prepare_osm

    counts = count_objects(path)
    best = cpu = float("inf")
    out = None
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        out = read_osm(path, vocabulary="urbanrep-osm")
        best = min(best, time.perf_counter() - t0)
        cpu = min(cpu, time.process_time() - c0)  # every thread of the process (osmium decodes in a pool)
    assert out is not None and out.pois is not None and out.roads is not None
    t0 = time.perf_counter()
    bundle = prepare_osm(path, "h3:9")
    prep = time.perf_counter() - t0
    return {**counts, "bytes": path.stat().st_size, "read_s": best, "nodes_per_s": counts["nodes"] / best,
            "cpu_s": cpu, "nodes_per_cpu_s": counts["nodes"] / cpu,
            "pois": len(out.pois), "pois_per_s": len(out.pois) / best, "roads": len(out.roads),
            "prepare_h3_9_s": prep, "regions": len(bundle.regions)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("pbf", nargs="*", help="extracts (default: the ones in the data root)")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tile", type=int, default=0, help="also time N x N copies of the Helsinki extract")
    args = parser.parse_args()
    root = resolve_data_root(args.data_root)
    paths = [Path(p) for p in args.pbf] or [root / p for p in DEFAULT if (root / p).exists()]
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench_osm_") as tmp:
        if args.tile > 1:
            name = f"helsinki_x{args.tile * args.tile}.osm.pbf"
            paths.append(tiled_extract(root / DEFAULT[0], args.tile, Path(tmp) / name))
        print("| extract | MB | nodes | ways | relations | read_osm s | CPU s | file nodes/s | nodes/CPU-s | POIs | "
              "POIs/s | prepare h3:9 s |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for path in paths:
            r = bench(path, args.repeat)
            print(f"| {path.name} | {r['bytes'] / 1e6:.2f} | {r['nodes']:,} | {r['ways']:,} | {r['relations']:,} | "
                  f"{r['read_s']:.3f} | {r['cpu_s']:.3f} | {r['nodes_per_s']:,.0f} | {r['nodes_per_cpu_s']:,.0f} | "
                  f"{r['pois']:,} | {r['pois_per_s']:,.0f} | "
                  f"{r['prepare_h3_9_s']:.2f} ({r['regions']} regions) |")


if __name__ == "__main__":
    main()
