"""Checks of issue 14 on the default model: a pure-noise modality, and subsets of modalities.

Nothing here chooses a design: the defaults are fixed by ``experiments/select_design.py`` on
the development cities; this script measures the chosen default on NYC-180 (held out) and
says whether each check passes. Two checks:

* **Noise modality.** NYC-180 plus a pure-noise aggregated modality (seeded Gaussian
  features, same mask as POI; :func:`urbanrep.experts.testing.with_noise_modality`). Passes
  when its mean fusion weight is <= 0.05 and no strict R² (mean over training seeds) drops by
  more than 0.01 against the same seeds without it.
* **Modality subsets.** ``model.modalities=[mobility]``: NMI >= that of the raw out+in flow
  shares (KMeans on the 2N-wide rows of the main OD matrix, ``raw_od_shares_only``), strict
  check-in and crime R² >= the best raw-flow baseline. ``[poi, mobility, landuse]``: every strict task >= the best raw row of those
  modalities (and NMI >= the best raw NMI).

Usage::

    python -m experiments.quality_checks --out /tmp/quality [--publish] [--seeds 0 1 2]
    # or in parallel processes, then the report:
    for part in default noise mobility poi+mobility+landuse; do
        python -m experiments.quality_checks --out /tmp/quality --only $part & done; wait
    python -m experiments.quality_checks --out /tmp/quality --publish

Writes ``OUT/QUALITY_CHECKS.md`` and ``OUT/quality_checks.json`` (``--publish``: also into
``experiments/``). Exit status 0 when every check passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from experiments.benchmark import REPO, check_out_folder
from urbanrep.atomic import write_parquet_atomic, write_text_atomic
from urbanrep.train import config_to_dict

log = logging.getLogger("quality_checks")

NYC_TASKS = ("check_in", "crime", "service_call", "carbon", "income")
MAIN_OD = "od_trips"  # NYC-180's main OD matrix (the graph's mobility edges)
SUBSETS: dict[str, tuple[str, ...]] = {"mobility": ("mobility",), "poi+mobility+landuse": ("poi", "mobility", "landuse")}


class NotCached(Exception):
    """A run that ``--only`` left to another process is not in the cache yet."""


def _train(data: Any, modalities: tuple[str, ...] | None, seed: int, epochs: int, cache: Path, tag: str,
           allowed: bool) -> tuple[pd.DataFrame, dict[str, float]]:
    """Train the default model (on ``modalities``) or reuse the run cached under ``tag``.

    A cached run on another region graph (its recorded ``adjacency``; queen for runs that record
    none, as every graph was queen then) is trained anew. A cached run whose recorded settings
    differ from the current default's is trained anew, except
    when the only differences are written-embedding steps added after the run and off in it
    (``benchmark.LATER_LAST_STEPS``: the positional columns, the overall scale and its total
    variance, the volumes):
    they are the last steps of the written embedding, so they are applied to the cached one.
    """
    from experiments.benchmark import (
        LATER_LAST_STEPS,
        STEP_SETTINGS,
        TRANSFORM_OFF,
        _train_key,
        changed_settings,
        changed_training,
        effective_train_config,
        output_transform,
    )
    from urbanrep.graphs.schema import graph_adjacency
    from urbanrep.network import ModelConfig
    from urbanrep.train import TrainConfig, embeddings_frame, train

    mc = replace(ModelConfig(), modalities=modalities)
    tc = effective_train_config(TrainConfig(epochs=epochs, seed=seed, num_threads=1), mc, data)
    path = cache / f"{tag}_s{seed}_e{epochs}.parquet"
    meta = path.with_suffix(".json")
    adjacency = graph_adjacency(data)
    cached = json.loads(meta.read_text()) if path.exists() and meta.exists() else None
    if cached is not None and cached.get("adjacency", "queen") != adjacency:  # runs before it: queen graphs
        log.info("%s seed %d: the cached run is of a %s graph, this one is %s; it is trained anew", tag, seed,
                 cached.get("adjacency", "queen"), adjacency)
    elif cached is not None:
        emb = pd.read_parquet(path).set_index("region_id")
        recorded = cached.get("model_config") or {}
        changed = changed_settings(recorded, config_to_dict(mc)) + changed_training(cached.get("train_config"),
                                                                                   _train_key(tc))
        if not changed:
            return emb, cached["weights"]
        later = {k: TRANSFORM_OFF[k] for k in LATER_LAST_STEPS}  # the last steps, off
        if set(changed) <= set(later) and all(recorded.get(k, off) == off for k, off in later.items() if k in changed):
            redo = set(changed) | set(STEP_SETTINGS)  # a step's settings are always the current ones
            if "output_variance" in changed:  # the run was scaled to another total: scaling it again sets this one
                redo.add("output_norm")
            missing = replace(mc, **{k: off for k, off in TRANSFORM_OFF.items() if k not in redo})
            return output_transform(emb, data, missing), cached["weights"]
        log.info("%s seed %d: the cached run has other settings (%s); it is trained anew", tag, seed,
                 ", ".join(changed))
    if not allowed:
        raise NotCached(tag)
    res = train(data, mc, tc)
    weights = dict(zip(res.modalities, res.fusion_weights.mean(0).tolist(), strict=True))
    emb = embeddings_frame(res.region_ids, res.embeddings)
    cache.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(emb.reset_index(), path)
    write_text_atomic(meta, json.dumps({"weights": weights, "seed": seed, "epochs": epochs,
                                        "model_config": config_to_dict(mc), "train_config": _train_key(tc),
                                        "adjacency": adjacency}))
    return emb, weights


def _scores(emb: pd.DataFrame, bundle: Any, strict_seeds: int) -> dict[str, float]:
    from urbanrep.evaluate import EvalConfig, evaluate_embeddings

    rep = evaluate_embeddings(emb, bundle, EvalConfig(protocol="strict", seeds=tuple(range(strict_seeds))))
    out = {t: float(rep["tasks"][t]["r2"]) for t in NYC_TASKS if t in rep["tasks"]}
    paper = evaluate_embeddings(emb, bundle, EvalConfig(protocol="paper"))
    out["nmi"] = float(paper["clustering"]["nmi"])  # the paper protocol's KMeans(12, random_state=3)
    return out


def _mean(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def _std(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.std([r[k] for r in rows])) for k in rows[0]}


def raw_rows(bundle: Any, modalities: Sequence[str], strict_seeds: int) -> dict[str, dict[str, float]]:
    """Raw-feature baselines of ``modalities`` (log and plain counts; flow shares for mobility)."""
    from urbanrep.evaluate import raw_modality_baseline

    rows: dict[str, dict[str, float]] = {}
    for m in modalities:
        rows[f"raw_{m}"] = _scores(raw_modality_baseline(bundle, m), bundle, strict_seeds)
        rows[f"raw_{m}_counts"] = _scores(raw_modality_baseline(bundle, m, log1p=False), bundle, strict_seeds)
        if m == "mobility":
            shares = raw_modality_baseline(bundle, m, mobility="shares")
            rows["raw_mobility_shares"] = _scores(shares, bundle, strict_seeds)
            # The reference row: the main OD matrix's out- and in-share rows alone (2N columns),
            # without the flow totals, whose scale dominates KMeans in the row above.
            main = [c for c in shares.columns if c.startswith(f"{MAIN_OD}:out_to_") or c.startswith(f"{MAIN_OD}:in_from_")]
            if main:
                rows["raw_od_shares_only"] = _scores(shares[main], bundle, strict_seeds)
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    from urbanrep.datasets import load_dataset
    from urbanrep.experts.testing import with_noise_modality
    from urbanrep.graphs import GraphConfig, build_graph

    bundle = load_dataset(None, args.data_root)
    data, _ = build_graph(bundle, GraphConfig())
    noisy = with_noise_modality(data, like="poi", slot="road", seed=0)
    res: dict[str, Any] = {"seeds": list(args.seeds), "epochs": args.epochs, "strict_seeds": args.strict_seeds}
    t0 = time.process_time()
    cache = args.out / "cache"

    def runs(graph: Any, mods: tuple[str, ...] | None, tag: str) -> list[tuple[pd.DataFrame, dict[str, float]]]:
        allowed = args.only is None or args.only == tag
        got = [_train(graph, mods, s, args.epochs, cache, tag, allowed) for s in args.seeds]
        if args.only is not None:
            raise NotCached(f"--only {tag}: trained")
        return got

    base = [_scores(e, bundle, args.strict_seeds) for e, _ in runs(data, None, "default")] \
        if args.only in (None, "default") else []
    noise_runs = runs(noisy, None, "noise") if args.only in (None, "noise") else []
    with_noise = [_scores(e, bundle, args.strict_seeds) for e, _ in noise_runs]
    weights = [w for _, w in noise_runs]
    if args.only is None:
        drop = {t: _mean(base)[t] - _mean(with_noise)[t] for t in NYC_TASKS}
        noise_w = float(np.mean([w["road"] for w in weights]))
        res["noise"] = {"base": _mean(base), "base_std": _std(base), "with_noise": _mean(with_noise),
                        "with_noise_std": _std(with_noise), "drop": drop, "noise_weight": noise_w,
                        "weights": _mean(weights),
                        "passed": bool(noise_w <= 0.05 and max(drop.values()) <= 0.01)}
    res["subsets"] = {}
    for name, mods in SUBSETS.items():
        if args.only is not None and args.only != name:
            continue
        scored = [_scores(e, bundle, args.strict_seeds) for e, _ in runs(data, mods, name)]
        raws = raw_rows(bundle, mods, args.strict_seeds)
        mean = _mean(scored)
        if name == "mobility":
            need = {"nmi": max(raws["raw_mobility_shares"]["nmi"], raws.get("raw_od_shares_only", {}).get("nmi", 0.0)),
                    **{t: max(r[t] for r in raws.values()) for t in ("check_in", "crime")}}
        else:
            need = {t: max(r[t] for r in raws.values()) for t in (*NYC_TASKS, "nmi")}
        checks = {t: {"need": v, "got": mean[t], "ok": bool(mean[t] >= v)} for t, v in need.items()}
        res["subsets"][name] = {"modalities": list(mods), "mean": mean, "std": _std(scored), "raw": raws,
                                "checks": checks, "passed": all(c["ok"] for c in checks.values())}
        log.info("%s: %s", name, {t: (round(c["got"], 3), round(c["need"], 3)) for t, c in checks.items()})
    res["cpu_s"] = round(time.process_time() - t0, 1)
    res["passed"] = res["noise"]["passed"] and all(v["passed"] for v in res["subsets"].values())
    return res


def format_markdown(res: dict[str, Any], command: str) -> str:
    """The report."""
    cols = (*NYC_TASKS, "nmi")
    nz = res["noise"]
    lines = ["# Quality checks on NYC-180 (held out; nothing here chooses a design)", "",
             f"Regenerate with `{command}` ({time.strftime('%Y-%m-%d')}). Default model, {res['epochs']} epochs, "
             f"training seeds {res['seeds']}; strict protocol ({res['strict_seeds']} shuffled 5-fold splits, "
             "RidgeCV) for R², paper-protocol KMeans(12) for NMI; mean ± std over training seeds.", "",
             "## A pure-noise modality", "",
             f"Mean fusion weight of the noise modality: **{nz['noise_weight']:.3f}** (required <= 0.05); "
             "mean weights: " + ", ".join(f"{m} {w:.3f}" for m, w in nz["weights"].items()) + ".", "",
             "| embedding | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for key, label in (("base", "default"), ("with_noise", "default + noise modality")):
        lines.append(f"| {label} | " + " | ".join(f"{nz[key][c]:.3f} ± {nz[key + '_std'][c]:.3f}" for c in cols) + " |")
    lines.append("| drop | " + " | ".join(f"{nz['drop'][c]:+.3f}" if c in nz["drop"] else "" for c in cols) + " |")
    lines += ["", f"Noise check: **{'passed' if nz['passed'] else 'FAILED'}** (weight <= 0.05 and no strict R² "
              "drop > 0.01).", "", "## Subsets of modalities", ""]
    for sub in res["subsets"].values():
        lines += [f"### `model.modalities={sub['modalities']}`", "",
                  "| embedding | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols),
                  "| urbanrep | " + " | ".join(f"{sub['mean'][c]:.3f} ± {sub['std'][c]:.3f}" for c in cols) + " |"]
        for rname, r in sub["raw"].items():
            lines.append(f"| {rname} | " + " | ".join(f"{r[c]:.3f}" for c in cols) + " |")
        lines += ["", "| check | required | measured | passed |", "|---|---|---|---|"]
        lines += [f"| {t} | >= {c['need']:.3f} | {c['got']:.3f} | {'yes' if c['ok'] else '**no**'} |"
                  for t, c in sub["checks"].items()]
        lines.append("")
    lines.append(f"All checks: **{'passed' if res['passed'] else 'not all passed'}** (CPU of this run "
                 f"{res['cpu_s']} s; the runs already in OUT/cache are reused, not trained again).")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("urbanrep").setLevel(logging.WARNING)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="output folder outside the repository")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=None, help="default: TrainConfig().epochs")
    p.add_argument("--strict-seeds", type=int, default=5)
    p.add_argument("--data-root", type=Path, default=None)
    p.add_argument("--publish", action="store_true", help="also write experiments/QUALITY_CHECKS.md")
    p.add_argument("--only", choices=["default", "noise", *SUBSETS], default=None,
                   help="train only these runs into OUT/cache and stop (to run the parts in parallel processes); "
                        "a run without --only then trains what is missing and writes the report")
    args = p.parse_args(argv)
    args.out = check_out_folder(p, args.out)
    if args.epochs is None:
        from urbanrep.train import TrainConfig

        args.epochs = TrainConfig().epochs
    import torch

    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        res = run(args)
    except NotCached as exc:
        log.info("%s", exc)
        return 0
    shown = " ".join(argv if argv is not None else sys.argv[1:])
    md = format_markdown(res, f"python -m experiments.quality_checks {shown}".strip())
    for folder in [args.out] + ([REPO / "experiments"] if args.publish else []):
        write_text_atomic(folder / "QUALITY_CHECKS.md", md)
        write_text_atomic(folder / "quality_checks.json", json.dumps(res, indent=1) + "\n")
    print(md)
    return 0 if res["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
