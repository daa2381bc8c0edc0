"""Reference rows from peers' public code, run unchanged beside ours (issue 14).

The in-harness peers (:mod:`experiments.peers.hafusion`, :mod:`experiments.peers.hrep`) are our own
re-implementations, trained with urbanrep's budget (300 epochs). How close they come to the real
thing is a question only the real thing answers, so this script runs a peer's public code as
published (:data:`RELEASES`): HAFusion (github.com/MiRuacle24/HAFusion, ICDE 2024; Chicago-77 and
NYC-180) and MGFN (github.com/wushangbin/MGFN, IJCAI 2022; NYC-180, OD flows only). Its model,
objectives, optimiser and default budget (2,000 epochs) train on the very arrays it was released
with (the shared data holds them byte for byte); the final-epoch embedding is scored with
urbanrep's evaluator under the paper, strict and spatial-block protocols, and by the release's own
task code. The one change from its training script is the one the issue demands: no epoch chosen
by test scores (HAFusion's script keeps, per task, the epoch whose embedding scores best on the
test folds; MGFN's only prints its scores every 50 epochs).

The repository is not part of urbanrep and nothing of it is copied here: give ``--repo`` a work
tree of it (``git clone https://github.com/MiRuacle24/HAFusion``). Each training runs in a child
process inside that work tree (HAFusion's modules read their settings from ``sys.argv`` on import),
one torch thread, the seed set by ``torch.manual_seed`` before the model is built.

Usage::

    python -m experiments.peers.public_rerun --repo ~/src/HAFusion --cities chicago77 --seeds 0 1 2 \\
        --out /tmp/public --publish
    python -m experiments.peers.public_rerun --release mgfn --repo ~/src/MGFN --out /tmp/public --publish

Other embeddings can go through the release's task code too, for a side-by-side under the
protocol its published numbers used (HAFusion scores Chicago-77 with 25 shuffled folds, not the 10
unshuffled folds of the ``paper`` protocol): ``--also
urbanrep=/tmp/bench15/embeddings/{city}/urbanrep_s[012]_e300_*.parquet``.

``--publish`` writes the mean ± std over seeds to ``experiments/peers/public_reruns.json``, which
:mod:`experiments.benchmark` shows as the row ``<peer>_public`` of the city's tables (a reference
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger("public_rerun")

#: Where the published rows live (read by :func:`experiments.benchmark.run_city`).
PUBLISHED = Path(__file__).with_name("public_reruns.json")

#: Run in the child process, in HAFusion's work tree: its modules, its loss, its optimiser, a plain loop
#: (its own script also scores every 30th epoch on the test folds and keeps the best: left out).
HAFUSION_DRIVER = r"""
import sys, time, json
seed, epochs, out, data_path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
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

#: Scores embeddings with HAFusion's own task code (``tasks_<city>/``), in its work tree.
HAFUSION_TASKS = r"""
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

#: Run in MGFN's work tree: its own ``train_model`` (its loss, optimiser and 2,000 epochs; it prints
#: test scores every 50 epochs but keeps no epoch by them) on a model built here with a seed.
MGFN_DRIVER = r"""
import sys, time, json
seed, epochs, out, patterns, label = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
import numpy as np, torch
torch.set_num_threads(1)
torch.manual_seed(seed)
np.random.seed(seed)
import mgfn as release
model = release.MGFN(graph_num=7, node_num=180, output_dim=96)
wall, cpu = time.time(), time.process_time()
release.train_model(torch.Tensor(np.load(patterns)), torch.Tensor(np.load(label)), model=model)
emb = model.out_feature().detach().cpu().numpy()
np.save(out, emb)
print(json.dumps({"wall_s": round(time.time() - wall, 1), "cpu_s": round(time.process_time() - cpu, 1),
                  "shape": list(emb.shape)}))
"""

#: Scores embeddings with MGFN's own ``tasks.do_tasks`` (Ridge(alpha=1), 5 unshuffled folds; KMeans(12)).
MGFN_TASKS = r"""
import sys, json
import numpy as np
from tasks import do_tasks
arrays = np.load(sys.argv[2])
out = []
for key in sorted(arrays.files, key=lambda k: int(k[1:])):
    r = do_tasks(arrays[key].copy(), display=False)
    out.append({"crime": float(r[2]), "check_in": float(r[5]), "nmi": float(r[6]), "ari": float(r[7])})
print(json.dumps(out))
"""


@dataclass(frozen=True)
class Release:
    """A peer's public code: where it is, what it needs, how it trains and how it scores.

    Attributes:
        name: The peer's key (the row is ``<name>_public``).
        title: Its name in words.
        url: Its public repository.
        files: Files a work tree of it has (checked before anything runs).
        cities: Per city, the release's city code for its task code and the child's arguments after
            seed, epochs and output file (``{root}`` is the data root); every input is the file of
            the shared data that holds the release's array byte for byte (checked by md5: equal).
        driver: The child script that trains once (:func:`train_seed`).
        tasks: The child script that scores embeddings with the release's own task code.
        fixed_epochs: The training length its script fixes (None: ``--epochs`` sets it, default 2,000).
        scorer: The release's task code in words.
    """

    name: str
    title: str
    url: str
    files: tuple[str, ...]
    cities: dict[str, tuple[str, tuple[str, ...]]]
    driver: str
    tasks: str
    fixed_epochs: int | None
    scorer: str

    @property
    def row(self) -> str:
        return f"{self.name}_public"

    def description(self, epochs: int) -> str:
        return (f"reference: {self.title}'s public code ({self.url}) "
                f"run unchanged on its released arrays, {epochs:,} epochs, final-epoch embedding (no "
                "best-test-epoch choice), scored by this harness")


def _hafusion_flags(folder: str, code: str, files: dict[str, str]) -> tuple[str, ...]:
    return (f"{{root}}/{folder}", "--city", code, *(x for key, name in files.items() for x in (f"--{key}", name)))


RELEASES: dict[str, Release] = {
    "hafusion": Release(
        "hafusion", "HAFusion", "github.com/MiRuacle24/HAFusion", ("HAFusion_train.py", "HAFusion_Model.py", "parse_args.py", "utils.py"),
        {"chicago77": ("Chi", _hafusion_flags("chicago77", "Chi", {
            "mobility_dist": "/mob_dist.npy", "mobility_adj": "/mob-adj.npy", "POI_dist": "/poi_dist.npy",
            "landUse_dist": "/landUse_dist.npy", "POI_simi": "/poi_simi.npy", "landUse_simi": "/landUse_simi.npy"})),
         "nyc180": ("NY", _hafusion_flags("nyc_manhattan180/features", "NY", {
             "mobility_dist": "/hafusion_mob_dist.npy", "mobility_adj": "/mob_label.npy",
             "POI_dist": "/hafusion_poi_dist.npy", "landUse_dist": "/hafusion_landUse_dist.npy",
             "POI_simi": "/hafusion_poi_simi.npy", "landUse_simi": "/hafusion_landUse_simi.npy"}))},
        HAFUSION_DRIVER, HAFUSION_TASKS, None,
        "its `tasks_<city>/` code: Ridge(alpha=1), clipped, pooled R²; Chicago: 25 shuffled folds with "
        "random_state 2024 and the 3 regions without check-ins left out of the check-in task; NYC: 10 unshuffled "
        "folds, as the `paper` protocol"),
    "mgfn": Release(
        "mgfn", "MGFN", "github.com/wushangbin/MGFN", ("mgfn.py", "tasks.py"),
        {"nyc180": ("NY", ("{root}/nyc_manhattan180/features/mob_patterns.npy",
                           "{root}/nyc_manhattan180/features/mob_label.npy"))},
        MGFN_DRIVER, MGFN_TASKS, 2000,
        "its `tasks.py`: Ridge(alpha=1), 5 unshuffled folds, clipped, pooled R²; KMeans(12, random_state=3) "
        "against the community districts, which the installed scikit-learn runs once (n_init 'auto'; the "
        "scikit-learn 0.24 MGFN used ran 10, as the `paper` protocol does)"),
}


def last_line(text: str) -> str:
    """The last non-empty line of a child's error output (its exception), or a note that it printed none."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no error output"


def release_protocol(release: Release, repo: Path, city: str, embeddings: Sequence[np.ndarray]
                     ) -> list[dict[str, float]]:
    """Each ``[N, D]`` embedding's scores (rows in the release's order) by the release's own task code,
    run in its work tree (:attr:`Release.scorer`)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "embeddings.npz"
        np.savez(path, **{f"e{i}": np.asarray(e, np.float64) for i, e in enumerate(embeddings)})
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
        proc = subprocess.run([sys.executable, "-c", release.tasks, release.cities[city][0], str(path)], cwd=repo,
                              env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"public_rerun: the release's task code failed in {repo}: {last_line(proc.stderr)}")
    return list(json.loads(proc.stdout.strip().splitlines()[-1]))


def repo_commit(repo: Path) -> str:
    """The work tree's commit (``unknown`` when it is not a git checkout)."""
    try:
        return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def check_repo(release: Release, repo: Path) -> None:
    """Exit with a one-line error unless ``repo`` is a work tree of the release."""
    missing = [f for f in release.files if not (repo / f).is_file()]
    if missing:
        raise SystemExit(f"public_rerun: {repo} is not a work tree of {release.url} (missing {', '.join(missing)}); "
                         "clone it and pass its folder as --repo")


def train_seed(release: Release, repo: Path, city: str, seed: int, epochs: int, data_root: Path,
               out: Path) -> dict[str, Any]:
    """Train the release once in a child process; its final-epoch embedding goes to ``out`` (``.npy``)."""
    from urbanrep.atomic import write_text_atomic

    meta_path = out.with_suffix(".json")
    if out.exists() and meta_path.exists():
        return dict(json.loads(meta_path.read_text()))
    inputs = [a.replace("{root}", str(data_root)) for a in release.cities[city][1]]
    tmp = out.with_name(f".{out.stem}.tmp.npy")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    proc = subprocess.run([sys.executable, "-c", release.driver, str(seed), str(epochs), str(tmp), *inputs],
                          cwd=repo, env=env, capture_output=True, text=True)
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
                        columns=[f"public_{i:03d}" for i in range(emb.shape[1])])


def check_order(city: str, bundle: Any, data_root: Path) -> None:
    """The release's row order equals the bundle's region order: its crime counts, read in array order,
    are the bundle's crime target in region order (exit with an error otherwise)."""
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
        path = args.out / f"{args.release.row}_{city}_s{seed}_e{args.epochs}.npy"
        meta = train_seed(args.release, args.repo, city, seed, args.epochs, data_root, path)
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
    release = {args.release.row: aggregate(release_protocol(args.release, args.repo, city, arrays))}
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
        release[name] = {**aggregate(release_protocol(args.release, args.repo, city,
                                                      [t.to_numpy(np.float64) for t in tables])),
                         "files": [str(f) for f in files]}
    return {"kind": "reference", "description": args.release.description(args.epochs),
            "scorer": args.release.scorer,
            **{p: aggregate(v) for p, v in per.items()},
            "release_protocol": release,
            "train": {"seeds": list(args.seeds), "epochs": args.epochs,
                      "repo_commit": sorted({m["repo_commit"] for m in metas}),
                      "trained_at": sorted({m["trained_at"] for m in metas}),
                      "cpu_s_mean": float(np.mean([m["cpu_s"] for m in metas])),
                      **({"loss_last_mean": float(np.mean([m["loss_last"] for m in metas]))}
                         if all("loss_last" in m for m in metas) else {})},
            "command": "python -m experiments.peers.public_rerun " + shlex.join(args.argv)}


def published_rows(city: str, path: Path | None = None) -> dict[str, dict[str, Any]]:
    """The reference rows published for ``city`` in ``path`` (default :data:`PUBLISHED`; empty when none is)."""
    path = PUBLISHED if path is None else path
    if not path.exists():
        return {}
    return dict(json.loads(path.read_text()).get(city, {}))


def publish(name: str, rows: dict[str, dict[str, Any]], path: Path | None = None) -> None:
    """Merge ``{city: row}`` into ``path`` under the row ``name`` (default :data:`PUBLISHED`; written atomically)."""
    path = PUBLISHED if path is None else path
    from urbanrep.atomic import write_text_atomic

    doc = json.loads(path.read_text()) if path.exists() else {}
    for city, row in rows.items():
        doc.setdefault(city, {})[name] = row
    write_text_atomic(path, json.dumps(doc, indent=1, sort_keys=True) + "\n")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--release", choices=sorted(RELEASES), default="hafusion", help="which peer's public code")
    p.add_argument("--repo", type=Path, required=True, help="work tree of the release (a clone of its repository)")
    p.add_argument("--cities", nargs="+", choices=sorted({c for r in RELEASES.values() for c in r.cities}),
                   default=None, help="default: every city the release has arrays of")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=None, help="default: the release's 2,000")
    p.add_argument("--strict-seeds", type=int, default=10)
    p.add_argument("--out", type=Path, required=True, help="folder for the embeddings (reused when present)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--also", nargs="+", default=[], metavar="NAME=GLOB",
                   help="score these embeddings (region_id-indexed parquet; {city} in GLOB is the city) with the "
                        "release's task code too")
    p.add_argument("--publish", action="store_true", help=f"write the rows to {PUBLISHED.name}")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.release = RELEASES[args.release]
    fixed = args.release.fixed_epochs
    if fixed is not None and args.epochs not in (None, fixed):
        p.error(f"--epochs: {args.release.url}'s training script fixes {fixed} epochs; leave --epochs out")
    args.epochs = args.epochs or fixed or 2000
    args.cities = args.cities or list(args.release.cities)
    lacking = [c for c in args.cities if c not in args.release.cities]
    if lacking:
        p.error(f"--cities: {args.release.url} has no arrays of {', '.join(lacking)} (it has "
                f"{', '.join(args.release.cities)})")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    args.repo = args.repo.resolve()
    check_repo(args.release, args.repo)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = {city: score_city(args, city) for city in args.cities}
    for city, row in rows.items():
        for proto in ("paper", "strict", "spatial"):
            cells = {k: f"{v:.3f} ± {row[proto][f'{k}_std']:.3f}" for k, v in row[proto].items()
                     if not k.endswith("_std") and k != "n_seeds"}
            print(f"{city} {proto}: {cells}")
        for name, got in row["release_protocol"].items():
            cells = {k: f"{v:.3f} ± {got[f'{k}_std']:.3f}" for k, v in got.items()
                     if not k.endswith("_std") and k not in ("n_seeds", "files")}
            print(f"{city} release's own task code, {name} ({got['n_seeds']} embeddings): {cells}")
    if args.publish:
        publish(args.release.row, rows)
        print(f"wrote {PUBLISHED}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
