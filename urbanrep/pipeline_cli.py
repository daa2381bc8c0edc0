"""CLI commands for the pipeline stages (part of the CLI layer: may print and draw progress bars)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from urbanrep.errors import UrbanRepError

log = logging.getLogger(__name__)

RUN_EPILOG = """\
Dataset resolution: an explicit bundle folder (with manifest.json); else the named data set in the
data root (--data-root, else $URBANREP_DATA, else ../shared/data), converted on the fly; else, for
nyc_manhattan180 only, the copy embedded in the package (announced in one log line). Any other
name is an error listing the names that resolve.

Configuration: --config FILE (YAML, TOML or JSON with sections graph, model, train, minibatch,
evaluate, export) and any number of --set section.key=value, e.g. --set train.epochs=100
--set model.fusion.mode=global --set evaluate.protocol=paper.

Large graphs: --set train.mode=minibatch trains on mini-batches of spatial blocks (section
minibatch: sampler, batch_size, partition_size, num_neighbors, inference). Data-parallel over N processes (one per GPU;
gloo on CPU): add --nproc N, or launch 'torchrun --nproc_per_node=N -m urbanrep train GRAPH
--out RUN --set train.mode=minibatch'.
"""


def _default_run_dir(dataset: str | None) -> Path:
    name = Path(dataset).name if dataset else "nyc_manhattan180"
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


#: The sections of a run configuration (``RunConfig``'s fields).
RUN_SECTIONS = ("graph", "model", "train", "minibatch", "evaluate", "export")
#: The configuration sections each stage command reads (``run`` reads them all); a ``--set`` of
#: another section has no effect there, so it is named in a warning rather than dropped silently.
COMMAND_SECTIONS: dict[str, tuple[str, ...]] = {
    "build-graphs": ("graph",),
    "train": ("model", "train", "minibatch"),
    "embed": ("graph", "model", "train", "minibatch"),
    "evaluate": ("evaluate",),
    "export": ("export",),
}


def _config(args: argparse.Namespace, extra: list[str] | None = None) -> Any:
    from urbanrep.runconfig import load_run_config

    check_set_sections(getattr(args, "command", None), getattr(args, "set", None) or [])
    threads = [f"train.num_threads={args.threads}"] if getattr(args, "threads", None) else []
    return load_run_config(getattr(args, "config", None),
                           [*(getattr(args, "set", None) or []), *threads, *(extra or [])])


def check_set_sections(command: str | None, overrides: list[str]) -> None:
    """Warn, in one line, about every ``--set`` that ``command`` ignores (a setting of a section it does
    not read: e.g. the same flags given to every stage)."""
    sections = COMMAND_SECTIONS.get(command or "")
    if sections is None:
        return
    unused = [item for item in overrides
              if (section := item.split("=", 1)[0].strip().split(".", 1)[0]) in RUN_SECTIONS
              and section not in sections]  # an unknown section is the loader's error
    if unused:
        log.warning("'urbanrep %s' reads only the %s settings; ignored: %s", command, ", ".join(sections),
                    ", ".join(f"--set {u}" for u in unused))


def _tqdm_reporter(stage: str, total: int | None) -> Any:
    from tqdm.auto import tqdm

    class _Bar:
        def __init__(self) -> None:
            self.bar = tqdm(total=total, desc=stage, unit="step", leave=False, file=sys.stderr, dynamic_ncols=True)

        def update(self, n: int = 1, **info: Any) -> None:
            if info:
                self.bar.set_postfix(info, refresh=False)
            self.bar.update(n)

        def close(self) -> None:
            self.bar.close()

    return _Bar()


def install_progress(enabled: bool) -> None:
    """Progress bars with stage names and ETA when stderr is a terminal (and not --quiet)."""
    from urbanrep.progress import set_reporter

    set_reporter(_tqdm_reporter if enabled and sys.stderr.isatty() else None)


def _launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1") or "1") > 1


def _is_rank0() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _cmd_run(args: argparse.Namespace) -> int:
    from urbanrep.pipeline import run_pipeline

    if _launched_by_torchrun():
        raise UrbanRepError("'urbanrep run' runs every stage once and spawns its own training processes: use "
                            "'urbanrep run --nproc N', or torchrun with 'urbanrep train GRAPH --out RUN'")
    config = _config(args)
    out = Path(args.out) if args.out else _default_run_dir(args.dataset)
    result = run_pipeline(args.dataset, data_root=args.data_root, run_dir=out, config=config, resume=args.resume,
                          nproc=args.nproc, overwrite=args.overwrite)
    print(result.bundle_summary)
    if result.metrics:
        print_metrics(result.metrics)
    for stage, why in result.skipped.items():
        print(f"skipped {stage}: {why}")
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in result.stages.items())
    print(f"run folder: {out} ({result.wall_time_s:.1f} s: {stages})")
    return 0


def _cmd_build_graphs(args: argparse.Namespace) -> int:
    from urbanrep.graphs.schema import graph_counts
    from urbanrep.pipeline import build_graph_file, check_graph_target, resolve_bundle

    config = _config(args)
    check_graph_target(args.out, overwrite=args.overwrite)  # before the bundle is read: fail fast
    bundle = resolve_bundle(args.dataset, args.data_root)
    t0 = time.perf_counter()
    data, report = build_graph_file(bundle, args.out, config, overwrite=args.overwrite)
    counts = graph_counts(data)
    print(f"graph of {bundle.name} written to {args.out} in {time.perf_counter() - t0:.1f} s")
    print(json.dumps(counts, indent=2, default=str))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from urbanrep.pipeline import train_stage

    if args.nproc > 1 and _launched_by_torchrun():
        raise UrbanRepError("--nproc spawns processes itself; under torchrun leave it out (torchrun's "
                            "--nproc_per_node sets the number of processes)")
    api = train_stage(args.graph, args.out, _config(args), resume=args.resume, nproc=args.nproc,
                      overwrite=args.overwrite, trust_legacy_pickle=args.trust_legacy_pickle)
    res = api.result_
    assert res is not None
    if not _is_rank0():  # under torchrun: rank 0 reports
        return 0
    first, last = res.history[0]["total"], res.history[-1]["total"]
    print(f"trained {res.epochs_run} epochs in {res.wall_time_s:.1f} s; loss {first:.4f} -> {last:.4f}")
    print(f"embeddings: {Path(args.out) / 'embeddings.parquet'} ({res.embeddings.shape[0]} regions x "
          f"{res.embeddings.shape[1]} dims)")
    return 0


def _cmd_embed(args: argparse.Namespace) -> int:
    from urbanrep.folders import EMBED, claim_folder
    from urbanrep.pipeline import embed_stage, require_run_folder, resolve_bundle

    require_run_folder(args.model)
    # --config FILE replaces the run's configuration; --set alone changes the run's own
    config = _config(args) if args.config else None
    claim_folder(args.out, EMBED, overwrite=args.overwrite, create=False)  # before the work: fail fast
    bundle = resolve_bundle(args.dataset, args.data_root)
    emb = embed_stage(args.model, bundle, args.out, config, overwrite=args.overwrite,
                      overrides=[] if args.config else list(args.set or []))
    print(f"embeddings of {len(emb)} regions of {bundle.name} written to {Path(args.out) / 'embeddings.parquet'}")
    return 0


def _bundle_for_run(args: argparse.Namespace) -> Any:
    from urbanrep.pipeline import BUNDLE_DIR, require_run_folder, resolve_bundle

    require_run_folder(args.run_dir)
    if args.bundle is not None:
        return resolve_bundle(args.bundle, args.data_root)
    if (Path(args.run_dir) / BUNDLE_DIR).is_dir():
        return resolve_bundle(args.run_dir)
    raise UrbanRepError(f"run folder {args.run_dir} holds no {BUNDLE_DIR}/; pass the city with --bundle NAME_OR_PATH")


def print_metrics(metrics: dict[str, Any]) -> None:
    """Print an evaluation report (``metrics.json``) as a few aligned lines."""
    print(f"evaluation ({metrics.get('protocol')} protocol, {metrics.get('regressor')}):")
    for task, vals in metrics.get("tasks", {}).items():
        std = f" ± {vals['r2_std']:.3f}" if vals.get("r2_std") else ""
        print(f"  {task:<14} R2={vals['r2']:.3f}{std}  MAE={vals['mae']:.4g}  RMSE={vals['rmse']:.4g}")
    for group, vals in metrics.get("landuse", {}).items():
        print(f"  {group:<14} L1={vals['l1']:.3f}  KL={vals['kl']:.3f}  cosine={vals['cosine']:.3f}")
    clus = metrics.get("clustering") or {}
    if clus:
        print(f"  clustering     NMI={clus['nmi']:.3f}  ARI={clus['ari']:.3f} ({clus.get('label')})")
    for task, why in metrics.get("skipped", {}).items():
        print(f"  {task}: skipped ({why})")
    print_input_scores(metrics)


def print_input_scores(metrics: dict[str, Any]) -> None:
    """The embedding beside the model's own inputs under the same protocol (``metrics["inputs"]``)."""
    inputs = metrics.get("inputs") or {}
    if not inputs:
        return
    from urbanrep.evaluate.report import input_rows

    rows = input_rows(metrics)
    if not rows:
        return
    names = list(inputs)
    width = max(10, *(len(n) + 2 for n in names))
    print("the model's own inputs, one modality at a time, same protocol:")
    print(f"  {'':<18}{'embedding':>10}" + "".join(f"{n:>{width}}" for n in names))
    for label, own, others, better in rows:
        mark = "" if better else "  <- an input does better"
        print(f"  {label:<18}{own:>10.3f}" + "".join(f"{v:>{width}.3f}" if v is not None else f"{'':>{width}}"
                                                      for v in others) + mark)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from urbanrep.pipeline import evaluate_stage

    config = _config(args, [f"evaluate.protocol={args.protocol}"] if args.protocol else None)
    metrics = evaluate_stage(args.run_dir, _bundle_for_run(args), config, json_path=args.json)
    print_metrics(metrics)
    if args.json:
        print(f"metrics written to {args.json}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from urbanrep.pipeline import export_stage

    config = _config(args)
    if args.formats:
        from dataclasses import replace

        config = replace(config, export=replace(config.export, formats=tuple(args.formats.split(","))))
    written = export_stage(args.run_dir, _bundle_for_run(args), config, out_dir=args.out)
    for p in written:
        print(p)
    return 0


def _add_run_folder_args(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("run_dir", help=f"run folder {what}")
    p.add_argument("--bundle", default=None, help="dataset name or bundle path (default: run_dir/bundle)")
    p.add_argument("--data-root", default=None, help="folder holding the source data sets")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="config file (YAML, TOML or JSON) with sections "
                   "graph, model, train, evaluate, export")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set train.epochs=100 (repeatable)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def add_overwrite_arg(p: argparse.ArgumentParser, what: str) -> None:
    """``--overwrite``: replace an earlier output of urbanrep's own (never files urbanrep did not write)."""
    p.add_argument("--overwrite", action="store_true",
                   help=f"replace the {what} urbanrep wrote there before (a folder holding files urbanrep did not "
                        "write is always refused and left untouched)")


def _add_nproc_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nproc", type=_positive_int, default=1, metavar="N",
                   help="train data-parallel in N local processes (one per GPU; gloo on CPU); needs "
                        "--set train.mode=minibatch. Under torchrun leave it out")


def _add_threads_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                   help="CPU threads for training (= --set train.num_threads=N). Default: OMP_NUM_THREADS when "
                        "set, else 1 for graphs too small for more to pay (every benchmark city), else the "
                        "cores the load average leaves free; the log says what was chosen")


def add_trust_legacy_pickle_arg(p: argparse.ArgumentParser) -> None:
    """The opt-in for graph files of urbanrep <= 0.1 (pickles, which run code when opened)."""
    p.add_argument("--trust-legacy-pickle", action="store_true",
                   help="open a graph file written by urbanrep <= 0.1 (a pickle) by unpickling it. A pickle can run "
                        "any code when opened: use this only for a file you wrote yourself, and rebuild it with "
                        "'urbanrep build-graphs' to get a file that opens safely")


def add_commands(sub: argparse._SubParsersAction, add_dataset_args: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register the pipeline subcommands on the main parser."""
    fmt = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser("build-graphs", help="build the region graph of a bundle (graph.pt + graph.json)",
                       description="Build one PyG HeteroData region graph from a city bundle.",
                       epilog=RUN_EPILOG, formatter_class=fmt)
    add_dataset_args(p)
    p.add_argument("--out", required=True, help="graph file to write, e.g. graph.pt (a JSON manifest goes beside it)")
    add_overwrite_arg(p, "graph")
    _add_config_args(p)
    p.set_defaults(func=_cmd_build_graphs)

    p = sub.add_parser("train", help="train the model on a region graph; writes embeddings.parquet",
                       description="Train experts, fusion and contrastive heads on a region graph.",
                       epilog=RUN_EPILOG, formatter_class=fmt)
    p.add_argument("graph", help="graph file (.pt from build-graphs) or a folder holding graph.pt")
    p.add_argument("--out", required=True, help="run folder for checkpoints, loss.csv, model.pt, embeddings")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    add_overwrite_arg(p, "training outputs (and the evaluation and export made from them)")
    add_trust_legacy_pickle_arg(p)
    _add_nproc_arg(p)
    _add_threads_arg(p)
    _add_config_args(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("embed", help="apply a trained model to a bundle",
                       description="Embed a city with a trained model (same modalities and feature widths). "
                                   "--set changes the run's own configuration; of the model settings only "
                                   "those of the written embedding can change after training (e.g. --set "
                                   "model.output_volumes=false, --set 'model.volume_scales=[log]'); --config "
                                   "FILE replaces the run's configuration.",
                       epilog=RUN_EPILOG, formatter_class=fmt)
    p.add_argument("model", help="folder holding model.pt and config.json (a run folder)")
    add_dataset_args(p)
    p.add_argument("--out", required=True, help="folder for embeddings.parquet and fusion_weights.parquet")
    add_overwrite_arg(p, "embeddings")
    _add_config_args(p)
    p.set_defaults(func=_cmd_embed)

    p = sub.add_parser("evaluate", help="downstream regression and clustering of a run's embeddings",
                       description="Evaluate run_dir/embeddings.parquet on the city's targets and labels.")
    _add_run_folder_args(p, "holding embeddings.parquet")
    p.add_argument("--protocol", choices=["strict", "paper", "hafusion", "mgfn", "mtgc"], default=None,
                   help="strict (default: repeated shuffled k-fold, inner-CV alpha), paper (the published NYC-180 "
                        "setting) or a peer's published scorer: hafusion (Ridge(1), unshuffled KFold(10), clip "
                        "at 0), mgfn or mtgc (the same with KFold(5); KMeans(12, random_state=3))")
    p.add_argument("--json", default=None, help="also write the metrics to this JSON file")
    _add_config_args(p)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("export", help="GIS files, figures and the HTML report of a run",
                       description="Join embeddings, fusion weights and predictions to the region polygons.")
    _add_run_folder_args(p, "holding embeddings.parquet, fusion_weights.parquet, predictions.parquet")
    p.add_argument("--out", default=None, help="folder for the GIS files (default run_dir/gis)")
    p.add_argument("--formats", default=None, help="comma-separated: parquet,gpkg,geojson,csv (default all)")
    _add_config_args(p)
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("run", help="every stage for one data set into one run folder (default NYC-180)",
                       description="Run every stage for one data set into one run folder: bundle, graph, "
                                   "training, evaluation, GIS export, maps and the HTML report.",
                       epilog=RUN_EPILOG, formatter_class=fmt)
    add_dataset_args(p)
    p.add_argument("--out", default=None, help="run folder (default runs/<name>-<timestamp>): new, empty or an "
                   "urbanrep run folder; locked while the run lasts")
    p.add_argument("--resume", action="store_true", help="continue training from the newest checkpoint in --out")
    add_overwrite_arg(p, "run")
    _add_nproc_arg(p)
    _add_threads_arg(p)
    _add_config_args(p)
    p.set_defaults(func=_cmd_run)


__all__ = ["UrbanRepError", "add_commands", "add_overwrite_arg", "add_trust_legacy_pickle_arg", "install_progress",
           "print_metrics"]
