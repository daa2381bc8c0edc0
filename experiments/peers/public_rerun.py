"""Reference rows from a peer's public code, run unchanged beside ours (issue 14).

The in-harness peers (:mod:`experiments.peers.hafusion`, :mod:`experiments.peers.hrep`) are our own
re-implementations, trained with urbanrep's budget (300 epochs). How close they come to the real
thing is a question only the real thing answers, so this script runs HAFusion's public code
(github.com/MiRuacle24/HAFusion, ICDE 2024) as published: its model, objectives, data loading,
optimiser and default budget (2,000 epochs), on the very arrays it was released with (the shared
data holds them byte for byte), and scores the final-epoch embedding with urbanrep's evaluator
under the paper, strict and spatial-block protocols. The one change from its training script is
the one the issue demands: no per-task choice of the epoch with the best test R² (the release
keeps, for each task, the epoch whose embedding scores best on the test folds).

The repository is not part of urbanrep and nothing of it is copied here: give ``--repo`` a work
tree of it (``git clone https://github.com/MiRuacle24/HAFusion``). Each training runs in a child
process inside that work tree (its modules read their settings from ``sys.argv`` on import), one
torch thread, the seed set by ``torch.manual_seed`` before the model is built.

Usage::

    python -m experiments.peers.public_rerun --repo ~/src/HAFusion --cities chicago77 --seeds 0 1 2 \\
        --out /tmp/hafusion_public --publish

The final-epoch embeddings are also scored by the release's own task code (``tasks_Chi/`` scores
Chicago with 25 shuffled folds, not the 10 unshuffled folds of the ``paper`` protocol), and so can
other embeddings be, for a side-by-side under the protocol its published numbers used: ``--also
urbanrep=/tmp/bench15/embeddings/{city}/urbanrep_s[012]_e300_*.parquet``.

``--publish`` writes the mean ± std over seeds to ``experiments/peers/public_reruns.json``, which
:mod:`experiments.benchmark` shows as the row ``hafusion_public`` of the city's tables (a reference
row: not retrained by the benchmark, not part of its target checks).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger("public_rerun")

#: Where the published rows live (read by :func:`experiments.benchmark.run_city`).
PUBLISHED = Path(__file__).with_name("public_reruns.json")

ROW = "hafusion_public"
DESCRIPTION = ("reference: HAFusion's public code (github.com/MiRuacle24/HAFusion) run unchanged on its released "
               "arrays, 2,000 epochs, final-epoch embedding (no best-test-epoch choice), scored by this harness")

#: The release's city code and, per input of its ``load_data``, the file in the shared data root
#: that holds the same bytes (checked by md5 against the release: equal).
CITY_FILES: dict[str, tuple[str, str, dict[str, str]]] = {
    "chicago77": ("Chi", "chicago77", {
        "mobility_dist": "/mob_dist.npy", "mobility_adj": "/mob-adj.npy", "POI_dist": "/poi_dist.npy",
        "landUse_dist": "/landUse_dist.npy", "POI_simi": "/poi_simi.npy", "landUse_simi": "/landUse_simi.npy"}),
    "nyc180": ("NY", "nyc_manhattan180/features", {
        "mobility_dist": "/hafusion_mob_dist.npy", "mobility_adj": "/mob_label.npy",
        "POI_dist": "/hafusion_poi_dist.npy", "landUse_dist": "/hafusion_landUse_dist.npy",
        "POI_simi": "/hafusion_poi_simi.npy", "landUse_simi": "/hafusion_landUse_simi.npy"}),
}

#: Run in the child process, in the repository's work tree: its modules, its loss, a plain loop.
DRIVER = r"""
import sys, time, json
seed, epochs, data_path, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
sys.argv = [sys.argv[0]] + sys.argv[5:]
import numpy as np, torch
torch.set_num_threads(1)
from parse_args import args
args.data_path = data_path
args.epochs = epochs
torch.manual_seed(seed)
np.random.seed(seed)
import HAFusion_train as release
model = release.HAFusion(args.POI_dim, args.landUse_dim, args.region_num, args.embedding_size, args.d_prime,
                         args.d_m, args.c)
loss_fn = release.ModelLoss()
opt = torch.optim.Adam(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
wall, cpu = time.time(), time.process_time()
losses = []
for epoch in range(args.epochs):
    model.train()
    out_s, out_t, out_p, out_l = model(release.features)
    loss = loss_fn(out_s, out_t, release.mob_adj, out_p, release.poi_sim, out_l, release.land_sim)
    opt.zero_grad()
    loss.backward()
    opt.step()
    losses.append(float(loss.detach()))
emb = model.out_feature().detach().cpu().numpy()
np.save(out, emb)
print(json.dumps({"wall_s": round(time.time() - wall, 1), "cpu_s": round(time.process_time() - cpu, 1),
                  "loss_first": losses[0], "loss_last": losses[-1], "shape": list(emb.shape)}))
"""


#: Scores embeddings with the release's own task code (its folds, probe and clipping), in its work tree.
RELEASE_TASKS = r"""
import sys, json, importlib
import numpy as np
code, arrays = sys.argv[1], np.load(sys.argv[2])
tasks = {"check_in": "tasks_chk", "crime": "tasks_crime", "service_call": "tasks_serviceCall"}
out = []
for key in sorted(arrays.files, key=lambda k: int(k[1:])):
    row = {}
    for task, module in tasks.items():
        row[task] = float(importlib.import_module(f"tasks_{code}.{module}").do_tasks(arrays[key].copy(), display=False)[2])
    out.append(row)
print(json.dumps(out))
"""


def last_line(text: str) -> str:
    """The last non-empty line of a child's error output (its exception), or a note that it printed none."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no error output"


def release_protocol(repo: Path, city: str, embeddings: Sequence[np.ndarray]) -> list[dict[str, float]]:
    """R² of each ``[N, D]`` embedding (rows in the release's order) on check-in, crime and service
    calls, computed by the release's own evaluation code (``tasks_<city>/``; Chicago: Ridge(alpha=1),
    25 shuffled folds with ``random_state=2024``; NYC: 10 unshuffled folds), run in its work tree."""
    import tempfile

    code = CITY_FILES[city][0]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "embeddings.npz"
        np.savez(path, **{f"e{i}": np.asarray(e, np.float64) for i, e in enumerate(embeddings)})
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
        proc = subprocess.run([sys.executable, "-c", RELEASE_TASKS, code, str(path)], cwd=repo, env=env,
                              capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"public_rerun: the release's task code failed in {repo}: "
                         f"{last_line(proc.stderr)}")
    return list(json.loads(proc.stdout.strip().splitlines()[-1]))


def repo_commit(repo: Path) -> str:
    """The work tree's commit (``unknown`` when it is not a git checkout)."""
    try:
        return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def check_repo(repo: Path) -> None:
    """Exit with a one-line error unless ``repo`` is a work tree of HAFusion's release."""
    missing = [f for f in ("HAFusion_train.py", "HAFusion_Model.py", "parse_args.py", "utils.py")
               if not (repo / f).is_file()]
    if missing:
        raise SystemExit(f"public_rerun: {repo} is not a work tree of github.com/MiRuacle24/HAFusion "
                         f"(missing {', '.join(missing)}); clone it and pass its folder as --repo")


def train_seed(repo: Path, city: str, seed: int, epochs: int, data_root: Path, out: Path) -> dict[str, Any]:
    """Train the release once in a child process; its final-epoch embedding goes to ``out`` (``.npy``)."""
    from urbanrep.atomic import write_text_atomic

    code, folder, files = CITY_FILES[city]
    meta_path = out.with_suffix(".json")
    if out.exists() and meta_path.exists():
        return dict(json.loads(meta_path.read_text()))
    flags = ["--city", code, "--epochs", str(epochs)]
    for key, name in files.items():
        flags += [f"--{key}", name]
    tmp = out.with_name(f".{out.stem}.tmp.npy")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(seed), str(epochs), str(data_root / folder), str(tmp),
                           *flags], cwd=repo, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"public_rerun: {city} seed {seed} failed in {repo}: {last_line(proc.stderr)}")
    meta = json.loads(proc.stdout.strip().splitlines()[-1])
    meta.update(seed=seed, epochs=epochs, repo_commit=repo_commit(repo), trained_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
    tmp.replace(out)
    write_text_atomic(meta_path, json.dumps(meta, indent=1))
    return meta


def as_table(emb: np.ndarray, bundle: Any) -> pd.DataFrame:
    """The release's rows (its array order: the bundle's region order) as a ``region_id``-indexed table."""
    ids = list(bundle.region_ids)
    if emb.shape[0] != len(ids):
        raise SystemExit(f"public_rerun: the embedding has {emb.shape[0]} rows, the city {len(ids)} regions")
    return pd.DataFrame(emb.astype(np.float64), index=pd.Index(ids, name="region_id"),
                        columns=[f"hafusion_{i:03d}" for i in range(emb.shape[1])])


def check_order(city: str, bundle: Any, data_root: Path) -> None:
    """The release's row order equals the bundle's region order: its crime counts, read in array order,
    are the bundle's crime target in region order (exit with an error otherwise)."""
    _, folder, _ = CITY_FILES[city]
    path = data_root / ("chicago77/crime_counts.npy" if city == "chicago77" else
                        "nyc_manhattan180/targets/crime_counts_label.npy")
    raw = np.load(path).astype(np.float64).ravel()
    t = bundle.targets
    ours = t[t["target"] == "crime"].set_index("region_id")["value"].reindex(bundle.region_ids).to_numpy(np.float64)
    if not np.allclose(raw, ours):
        raise SystemExit(f"public_rerun: {path} is not in the bundle's region order; the rows cannot be matched")


def score_city(args: argparse.Namespace, city: str) -> dict[str, Any]:
    """Train (or reuse) every seed and score it; the row for :data:`PUBLISHED`."""
    from experiments.benchmark import (
        CITIES,
        aggregate,
        evaluate_all,
        flatten_metrics,
        load_city,
        spatial_blocks_for,
    )
    from urbanrep.datasets import resolve_data_root
    from urbanrep.evaluate import EvalConfig, evaluate_embeddings

    data_root = resolve_data_root(args.data_root)
    bundle = load_city(CITIES[city], args.data_root)
    check_order(city, bundle, data_root)
    per: dict[str, list[dict[str, float]]] = {"paper": [], "strict": [], "spatial": []}
    metas, arrays = [], []
    for seed in args.seeds:
        path = args.out / f"{ROW}_{city}_s{seed}_e{args.epochs}.npy"
        meta = train_seed(args.repo, city, seed, args.epochs, data_root, path)
        metas.append(meta)
        arrays.append(np.load(path))
        emb = as_table(arrays[-1], bundle)
        ev = evaluate_all(emb, bundle, args.strict_seeds)
        spatial = flatten_metrics(evaluate_embeddings(emb, bundle, EvalConfig(
            seeds=tuple(range(args.strict_seeds)), spatial_blocks=spatial_blocks_for(len(emb)))))
        for p, got in (("paper", ev["paper"]), ("strict", ev["strict"]), ("spatial", spatial)):
            per[p].append(got)
        log.info("%s seed %d: %.0f CPU s; paper %s", city, seed, meta["cpu_s"],
                 {k: round(v, 3) for k, v in ev["paper"].items() if not k.endswith("_std")})
    release = {"hafusion_public": aggregate(release_protocol(args.repo, city, arrays))}
    for spec in args.also:  # other embeddings (e.g. urbanrep's written ones) through the same task code
        name, _, pattern = spec.partition("=")
        pattern = pattern.replace("{city}", city)
        files = sorted(Path().glob(pattern) if not Path(pattern).is_absolute()
                       else Path(pattern).parent.glob(Path(pattern).name))
        if not name or not files:
            raise SystemExit(f"public_rerun: --also {spec!r} names no embedding file; give NAME=GLOB of "
                             "region_id-indexed parquet tables")
        tables = [pd.read_parquet(f).set_index("region_id").reindex(bundle.region_ids) for f in files]
        if any(t.isna().any().any() for t in tables):
            raise SystemExit(f"public_rerun: --also {spec!r}: a table lacks some of the city's regions")
        release[name] = {**aggregate(release_protocol(args.repo, city, [t.to_numpy(np.float64) for t in tables])),
                         "files": [str(f) for f in files]}
    return {"kind": "reference", "description": DESCRIPTION,
            **{p: aggregate(v) for p, v in per.items()},
            "release_protocol": release,
            "train": {"seeds": list(args.seeds), "epochs": args.epochs,
                      "repo_commit": sorted({m["repo_commit"] for m in metas}),
                      "trained_at": sorted({m["trained_at"] for m in metas}),
                      "cpu_s_mean": float(np.mean([m["cpu_s"] for m in metas])),
                      "loss_last_mean": float(np.mean([m["loss_last"] for m in metas]))},
            "command": "python -m experiments.peers.public_rerun " + shlex.join(args.argv)}


def published_rows(city: str, path: Path | None = None) -> dict[str, dict[str, Any]]:
    """The reference rows published for ``city`` in ``path`` (default :data:`PUBLISHED`; empty when none is)."""
    path = PUBLISHED if path is None else path
    if not path.exists():
        return {}
    return dict(json.loads(path.read_text()).get(city, {}))


def publish(rows: dict[str, dict[str, Any]], path: Path | None = None) -> None:
    """Merge ``{city: row}`` into ``path`` (default :data:`PUBLISHED`; written atomically)."""
    path = PUBLISHED if path is None else path
    from urbanrep.atomic import write_text_atomic

    doc = json.loads(path.read_text()) if path.exists() else {}
    for city, row in rows.items():
        doc.setdefault(city, {})[ROW] = row
    write_text_atomic(path, json.dumps(doc, indent=1, sort_keys=True) + "\n")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repo", type=Path, required=True, help="work tree of github.com/MiRuacle24/HAFusion")
    p.add_argument("--cities", nargs="+", choices=sorted(CITY_FILES), default=["chicago77"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=2000, help="the release's default")
    p.add_argument("--strict-seeds", type=int, default=10)
    p.add_argument("--out", type=Path, required=True, help="folder for the embeddings (reused when present)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--also", nargs="+", default=[], metavar="NAME=GLOB",
                   help="score these embeddings (region_id-indexed parquet; {city} in GLOB is the city) with the "
                        "release's task code too")
    p.add_argument("--publish", action="store_true", help=f"write the rows to {PUBLISHED.name}")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    args.repo = args.repo.resolve()
    check_repo(args.repo)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = {city: score_city(args, city) for city in args.cities}
    for city, row in rows.items():
        for proto in ("paper", "strict", "spatial"):
            cells = {k: f"{v:.3f} ± {row[proto][f'{k}_std']:.3f}" for k, v in row[proto].items()
                     if not k.endswith("_std") and k != "n_seeds"}
            print(f"{city} {proto}: {cells}")
        for name, got in row["release_protocol"].items():
            cells = {k: f"{got[k]:.3f} ± {got[f'{k}_std']:.3f}" for k in ("check_in", "crime", "service_call")}
            print(f"{city} release's own task code, {name} ({got['n_seeds']} embeddings): {cells}")
    if args.publish:
        publish(rows)
        print(f"wrote {PUBLISHED}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
