"""Train the in-harness peers on benchmark cities and score them with the project's evaluator.

One embedding per (peer, city, seed, epochs), trained target-free with a fixed budget and scored
by ``urbanrep.evaluate.evaluate_embeddings`` under both protocols (``paper``; ``strict`` with
``--strict-seeds`` shuffled splits). Nothing is chosen on a test fold: the final epoch is kept.

Outputs (``--out``, default ``/tmp/urbanrep-peers``, never inside the repository)::

    OUT/<city>/<peer>_s<seed>_e<epochs>.parquet   embedding (a rerun reuses it)
    OUT/<city>/<peer>_s<seed>_e<epochs>.json      run report (views, timings, losses) and both evaluations
    OUT/peers.json / OUT/PEERS.md                 per-seed rows and mean ± std over seeds

Examples::

    python -m experiments.peers.measure --peers hafusion --cities nyc180 chicago77 --seeds 0 1 2 --epochs 300
    python -m experiments.peers.measure --peers hafusion --cities nyc180 --seeds 0 --epochs 2000
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from urbanrep.atomic import write_parquet_atomic, write_text_atomic

log = logging.getLogger("experiments.peers.measure")

REPO = Path(__file__).resolve().parents[2]
COLUMNS = ("check_in", "crime", "service_call", "carbon", "income", "population", "nmi", "ari")


def run_one(peer: str, city: str, bundle: Any, data: Any, seed: int, epochs: int, out: Path,
            strict_seeds: int) -> dict[str, Any]:
    """Fit (or reuse) one embedding and evaluate it under both protocols."""
    from experiments.benchmark import evaluate_all
    from experiments.peers import fit_peer

    stem = out / city / f"{peer}_s{seed}_e{epochs}"
    pq, js = stem.with_suffix(".parquet"), stem.with_suffix(".json")
    if pq.exists() and js.exists():
        rec = json.loads(js.read_text())
        if "eval" in rec and rec["eval"].get("strict_seeds") == strict_seeds:
            return dict(rec)
        emb = pd.read_parquet(pq).set_index("region_id")
    else:
        emb = fit_peer(peer, data, seed, epochs)
        rec = {"peer": peer, "city": city, "seed": seed, "epochs": epochs, "run": emb.attrs["peer"]}
        pq.parent.mkdir(parents=True, exist_ok=True)
        write_parquet_atomic(emb.reset_index(), pq)
        write_text_atomic(js, json.dumps(rec, indent=1, default=str))
    t0 = time.perf_counter()
    ev = evaluate_all(emb, bundle, strict_seeds)
    rec["eval"] = {**ev, "strict_seeds": strict_seeds, "eval_s": round(time.perf_counter() - t0, 1)}
    write_text_atomic(js, json.dumps(rec, indent=1, default=str))
    return dict(rec)


def summarise(recs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± std over seeds per (city, peer, epochs) and protocol."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in recs:
        groups.setdefault((r["city"], r["peer"], r["epochs"]), []).append(r)
    out: dict[str, Any] = {}
    for (city, peer, epochs), rs in sorted(groups.items()):
        row: dict[str, Any] = {"seeds": [r["seed"] for r in rs],
                               "s_per_epoch": float(np.mean([r["run"]["s_per_epoch"] for r in rs])),
                               "wall_s": float(np.mean([r["run"]["wall_s"] for r in rs])),
                               "cpu_s": float(np.mean([r["run"]["cpu_s"] for r in rs])),
                               "views": rs[0]["run"]["views"], "dropped_views": rs[0]["run"]["dropped_views"]}
        for p in ("paper", "strict"):
            keys = [k for k in rs[0]["eval"][p] if not k.endswith("_std")]
            row[p] = {k: (float(np.mean([r["eval"][p][k] for r in rs])), float(np.std([r["eval"][p][k] for r in rs])))
                      for k in keys}
        out[f"{city}/{peer}/e{epochs}"] = row
    return out


def markdown(summary: dict[str, Any]) -> str:
    """The summary as Markdown tables (one per protocol)."""
    lines = []
    for p in ("paper", "strict"):
        cols = [c for c in COLUMNS if any(c in row[p] for row in summary.values())]
        lines += [f"### `{p}` protocol (mean ± std over training seeds)", "",
                  "| city / peer / epochs | seeds | " + " | ".join(cols) + " | s/epoch | CPU s/run |",
                  "|---|---|" + "---|" * len(cols) + "---|---|"]
        for key, row in summary.items():
            cells = [f"{row[p][c][0]:.3f} ± {row[p][c][1]:.3f}" if c in row[p] else "" for c in cols]
            lines.append(f"| {key} | {len(row['seeds'])} | " + " | ".join(cells)
                         + f" | {row['s_per_epoch']:.2f} | {row['cpu_s']:.0f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from experiments.benchmark import CITIES, load_city
    from experiments.peers import PEERS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--peers", nargs="+", default=list(PEERS), choices=list(PEERS))
    ap.add_argument("--cities", nargs="+", default=["nyc180", "chicago77"], choices=list(CITIES))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=300, help="fixed training budget (default 300, urbanrep's)")
    ap.add_argument("--strict-seeds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("/tmp/urbanrep-peers"))
    ap.add_argument("--data-root", type=Path, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    out = args.out.resolve()
    if out == REPO or REPO in out.parents:
        print(f"urbanrep: error: --out {out} is inside the repository; choose a folder outside it", file=sys.stderr)
        return 1
    import torch

    from urbanrep.graphs import GraphConfig, build_graph

    torch.set_num_threads(1)
    for city in args.cities:
        bundle = load_city(CITIES[city], args.data_root)
        data, _ = build_graph(bundle, GraphConfig())
        strict_seeds = min(args.strict_seeds, CITIES[city].max_strict_seeds or args.strict_seeds)
        for peer in args.peers:
            for seed in args.seeds:
                rec = run_one(peer, city, bundle, data, seed, args.epochs, out, strict_seeds)
                log.info("%s %s seed %d e%d: %.2f s/epoch, paper %s, strict %s", city, peer, seed, args.epochs,
                         rec["run"]["s_per_epoch"],
                         {k: round(v, 3) for k, v in rec["eval"]["paper"].items() if not k.endswith("_std")},
                         {k: round(v, 3) for k, v in rec["eval"]["strict"].items() if not k.endswith("_std")})
    # The tables cover every evaluated run under OUT (earlier invocations included).
    recs = [r for r in (json.loads(f.read_text()) for f in sorted(out.glob("*/*.json"))) if "eval" in r]
    summary = summarise(recs)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "peers.json", json.dumps({"summary": summary, "runs": recs}, indent=1, default=str))
    md = markdown(summary)
    write_text_atomic(out / "PEERS.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
