"""Every stage for one data set, into one run folder (library side of ``urbanrep run``).

A run folder holds one file per stage, each written atomically::

    run_dir/
      bundle/                 the validated city bundle the run used
      graph.pt, graph.json    the region graph and its manifest (counts, drops, input hashes)
      config.json             the full RunConfig
      loss.csv, checkpoints/, model.pt
      embeddings.parquet      region_id + emb_000...      (the product)
      fusion_weights.parquet  region_id + one weight per modality
      metrics.json            downstream evaluation (when the bundle has targets or labels)
      predictions.parquet     out-of-fold predictions per target
      gis/                    GeoParquet, GeoPackage, GeoJSON (WGS84), CSV
      figures/, report.html   maps, scatter plots, loss curve and the HTML report
      run.json                wall time per stage and what each stage skipped

Each stage is also a function here, so the CLI's single-stage commands and the run share code.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from torch_geometric.data import HeteroData

from urbanrep.atomic import write_parquet_atomic, write_text_atomic
from urbanrep.bundle import CityBundle, read_bundle, write_bundle
from urbanrep.bundle.spec import MANIFEST
from urbanrep.datasets import load_dataset
from urbanrep.errors import UrbanRepError
from urbanrep.folders import (
    RUN,
    FolderError,
    claim_folder,
    folder_lock,
    is_owned,
    remove_outputs,
    remove_temporaries,
)
from urbanrep.graphs import build_graph, load_graph, save_graph
from urbanrep.model import UrbanRep, embed_graph
from urbanrep.runconfig import RunConfig
from urbanrep.safe_files import read_parquet
from urbanrep.train import EMBEDDINGS, FUSION_WEIGHTS

log = logging.getLogger(__name__)

__all__ = [
    "BUNDLE_DIR", "GRAPH_FILE", "METRICS_FILE", "PREDICTIONS_FILE", "RUN_SUMMARY", "RunResult",
    "build_graph_file", "check_graph_target", "embed_stage", "evaluate_stage", "export_stage", "owned_run_folder",
    "require_run_folder", "resolve_bundle", "run_pipeline", "train_stage",
]

BUNDLE_DIR = "bundle"
GRAPH_FILE = "graph.pt"
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.parquet"
RUN_SUMMARY = "run.json"
#: What training writes into a run folder (replaced only with overwrite, continued with resume).
TRAIN_OUTPUTS = ("config.json", "checkpoints", "loss.csv", "model.pt", EMBEDDINGS, FUSION_WEIGHTS)
#: What evaluation and export write (stale once the embedding changes).
EVAL_OUTPUTS = (METRICS_FILE, PREDICTIONS_FILE)
EXPORT_OUTPUTS = ("gis", "figures", "report.html")


@dataclass
class RunResult:
    """What a pipeline run produced.

    Attributes:
        run_dir: The run folder.
        bundle: The city bundle used.
        bundle_summary: Its one-line summary.
        stages: Wall seconds per stage.
        metrics: The evaluation report (None when the bundle has no targets or labels).
        skipped: Stage → why it was skipped.
    """

    run_dir: Path
    bundle: CityBundle
    bundle_summary: str
    stages: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Any] | None = None
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def wall_time_s(self) -> float:
        """Seconds over all stages."""
        return sum(self.stages.values())


@contextmanager
def _timed(stages: dict[str, float], name: str) -> Iterator[None]:
    t0 = time.perf_counter()
    log.info("stage %s ...", name)
    yield
    stages[name] = round(stages.get(name, 0.0) + time.perf_counter() - t0, 3)
    log.info("stage %s done in %.1f s", name, stages[name])


def resolve_bundle(source: str | Path | None, data_root: str | Path | None = None) -> CityBundle:
    """A bundle from a dataset name or bundle path, or the ``bundle/`` of a run folder."""
    if source is not None and (Path(source) / BUNDLE_DIR / MANIFEST).exists():
        return read_bundle(Path(source) / BUNDLE_DIR)
    return load_dataset(None if source is None else str(source), data_root)


def check_graph_target(out: str | Path, overwrite: bool = False, create: bool = False) -> Path:
    """Refuse to write a graph over a file urbanrep did not write (or over its own, unless ``overwrite``).

    A graph file is urbanrep's when the manifest beside it (``graph.json`` for ``graph.pt``) is a
    graph manifest. With ``create``, a new or empty parent folder is created and marked as a run
    folder, so that ``urbanrep train GRAPH --out <that folder>`` may continue in it.
    """
    from urbanrep.graphs.io import manifest_path

    out = Path(out)
    mpath = manifest_path(out)
    if out.is_dir():
        raise FolderError(f"{out} is a folder; give the graph file to write, e.g. {out / GRAPH_FILE}")
    existing = [p for p in (out, mpath) if p.exists()]
    if existing:
        ours = False
        if mpath.is_file():
            try:
                manifest = json.loads(mpath.read_text(encoding="utf-8"))
                ours = isinstance(manifest, dict) and {"format", "counts"} <= set(manifest)
            except (OSError, ValueError):
                ours = False
        if not ours:
            raise FolderError(f"{', '.join(map(str, existing))} exists and was not written by urbanrep; choose "
                              "another --out (urbanrep never overwrites files it did not write)")
        if not overwrite:
            raise FolderError(f"{out} already holds an urbanrep graph; pass --overwrite to replace it, or choose "
                              "another --out")
    parent = out.parent
    if create and (not parent.exists() or (parent.is_dir() and not any(parent.iterdir()))):
        claim_folder(parent, RUN, keep=True)
    return out


def build_graph_file(bundle: CityBundle, out: str | Path, config: RunConfig | None = None,
                     overwrite: bool = True) -> tuple[HeteroData, dict[str, Any]]:
    """Build ``bundle``'s region graph and write it (and ``graph.json`` beside it) to ``out``.

    Args:
        overwrite: Replace a graph urbanrep wrote at ``out`` before (never a foreign file).
    """
    config = config or RunConfig()
    check_graph_target(out, overwrite=overwrite)
    data, report = build_graph(bundle, config.graph)
    check_graph_target(out, overwrite=overwrite, create=True)
    save_graph(data, report, out)
    return data, report


def _read_graph(source: str | Path, trust_legacy_pickle: bool = False) -> HeteroData:
    path = Path(source)
    if path.is_dir():
        path = path / GRAPH_FILE
    if not path.exists():
        raise UrbanRepError(f"graph file {path} does not exist; write it with 'urbanrep build-graphs BUNDLE --out {path}'")
    return load_graph(path, trust_legacy_pickle=trust_legacy_pickle)


def _memory_bytes() -> int | None:
    """Physical memory of this machine in bytes (None where unknown)."""
    import os

    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def check_model_size(config: RunConfig) -> None:
    """Refuse, before any stage runs, layer widths whose weights alone cannot fit in memory.

    Every ``*channels`` setting ``c`` implies at least one ``c x c`` float32 weight matrix, held
    four times in training (weights, gradients and two Adam moments).

    Raises:
        ConfigError: naming the setting, the memory it needs and the machine's memory.
    """
    import dataclasses

    from urbanrep.errors import ConfigError

    total = _memory_bytes()
    if total is None:
        return

    def walk(obj: Any, prefix: str) -> Iterator[tuple[str, int]]:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                yield from walk(value, f"{prefix}{f.name}.")
            elif f.name.endswith("channels") and isinstance(value, int):
                yield f"{prefix}{f.name}", value

    for key, channels in walk(config.model, "model."):
        need = 4 * 4 * channels * channels
        if need > total:
            raise ConfigError(f"{key}={channels} needs at least {need / 2**30:.0f} GiB for one layer's weights in "
                              f"training, more than this machine's {total / 2**30:.0f} GiB of memory; use a width "
                              "such as 64-512")


def _is_worker_rank() -> bool:
    """True in a torchrun process other than rank 0 (which writes no files and takes no lock)."""
    import os

    return os.environ.get("RANK", "0") not in ("", "0")


def train_stage(graph: HeteroData | str | Path, run_dir: str | Path | None, config: RunConfig | None = None,
                resume: bool = False, nproc: int = 1, overwrite: bool = False,
                trust_legacy_pickle: bool = False) -> UrbanRep:
    """Train on a graph (object, ``.pt`` file or folder holding ``graph.pt``) into ``run_dir``.

    ``config.train.mode`` picks full-graph or mini-batch training; ``nproc > 1`` trains
    mini-batches data-parallel in that many local processes (see :meth:`UrbanRep.fit`).
    ``run_dir`` must be new, empty or a run folder of urbanrep's; one that already holds a
    trained model needs ``resume`` (continue) or ``overwrite`` (start over, removing the earlier
    training, evaluation and export outputs). The folder is locked while training runs.
    ``trust_legacy_pickle`` opens a graph file of urbanrep <= 0.1 (see :func:`~urbanrep.graphs.load_graph`).
    """
    check_model_size(config or RunConfig())
    data = graph if isinstance(graph, HeteroData) else _read_graph(graph, trust_legacy_pickle)
    if run_dir is None or _is_worker_rank():
        return UrbanRep(config).fit(data, run_dir=run_dir, resume=resume, nproc=nproc)
    with owned_run_folder(run_dir, overwrite=overwrite, keep=resume, outputs=TRAIN_OUTPUTS) as folder:
        if not resume:
            remove_outputs(folder, (*TRAIN_OUTPUTS, *EVAL_OUTPUTS, *EXPORT_OUTPUTS, RUN_SUMMARY))
        return UrbanRep(config).fit(data, run_dir=folder, resume=resume, nproc=nproc)


@contextmanager
def owned_run_folder(run_dir: str | Path, overwrite: bool = False, keep: bool = False,
                     outputs: tuple[str, ...] | None = None) -> Iterator[Path]:
    """Claim ``run_dir`` as a run folder (see :func:`urbanrep.folders.claim_folder`) and lock it.

    Args:
        outputs: The outputs whose presence needs ``overwrite`` or ``keep`` (None: any output).

    Yields:
        The folder, locked; urbanrep's temporaries left by killed writes are removed.
    """
    run_dir = Path(run_dir)
    if is_owned(run_dir, RUN):  # ours: a concurrent run is reported by the lock first
        with folder_lock(run_dir):
            _claim_run(run_dir, overwrite, keep, outputs)
            remove_temporaries(run_dir)
            yield run_dir
        return
    _claim_run(run_dir, overwrite, keep, outputs)
    with folder_lock(run_dir):
        remove_temporaries(run_dir)
        yield run_dir


def _claim_run(run_dir: Path, overwrite: bool, keep: bool, outputs: tuple[str, ...] | None) -> None:
    if outputs is None or overwrite or keep:
        claim_folder(run_dir, RUN, overwrite=overwrite, keep=keep)
        return
    claim_folder(run_dir, RUN, keep=True)  # marker and foreign files checked; then only ``outputs`` count
    present = [name for name in outputs if (run_dir / name).exists()]
    if present:
        raise FolderError(f"{run_dir} already holds an urbanrep run ({', '.join(present)}); pass --overwrite to "
                          "replace it, or --resume to continue it, or choose another --out")


def embed_stage(model_dir: str | Path, bundle: CityBundle, out_dir: str | Path,
                config: RunConfig | None = None, overwrite: bool = False,
                overrides: Sequence[str] = ()) -> pd.DataFrame:
    """Apply the model in ``model_dir`` to ``bundle``; write embeddings and fusion weights to ``out_dir``.

    The configuration is ``config`` if given, else the run folder's own (its model settings as
    trained), with the ``section.key=value`` ``overrides`` applied. Its written-embedding settings
    (:data:`urbanrep.network.WRITTEN_FIELDS`, e.g. ``model.output_volumes``) may differ from the
    trained model's and are applied; any other model setting that differs is an error
    (:meth:`urbanrep.network.RegionModel.take_written_settings`).

    ``out_dir`` must be new, empty or urbanrep's own; earlier embeddings there are replaced
    only with ``overwrite``.
    """
    from urbanrep.configuration import apply_overrides
    from urbanrep.folders import EMBED

    claim_folder(out_dir, EMBED, overwrite=overwrite, create=False)
    api = UrbanRep.load(model_dir)
    if config is not None or overrides:
        base = (config or api.config).to_dict()
        api.config = RunConfig.from_mapping(apply_overrides(base, list(overrides)), "--set")
    for taken in api._require_model().take_written_settings(api.config.model, f"the configuration for {model_dir}"):
        log.info("written embedding: %s", taken)  # before building the graph: a bad setting fails fast
    data, report = api.build_graph(bundle)
    minibatch = api.config.minibatch if api.config.train.mode == "minibatch" else None
    emb, weights = embed_graph(api._require_model(), data, api.config.train.device, minibatch)
    out = claim_folder(out_dir, EMBED, overwrite=overwrite)
    remove_temporaries(out)
    write_parquet_atomic(emb.reset_index(), out / EMBEDDINGS)
    write_parquet_atomic(weights.reset_index(), out / FUSION_WEIGHTS)
    log.info("embedded %d regions of %s with the model in %s", len(emb), bundle.name, model_dir)
    return emb


def _has_evaluation_data(bundle: CityBundle) -> bool:
    has_targets = bundle.targets is not None and len(bundle.targets) > 0
    has_labels = bundle.labels is not None and len(bundle.labels) > 0
    return has_targets or has_labels


def require_run_folder(run_dir: str | Path) -> Path:
    """``run_dir`` as a Path, or an error saying it does not exist or is not a folder."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise UrbanRepError(f"run folder {run_dir} does not exist; pass a folder written by 'urbanrep run' or "
                            "'urbanrep train'")
    if not run_dir.is_dir():
        raise UrbanRepError(f"{run_dir} is a file, not a run folder; pass a folder written by 'urbanrep run' or "
                            "'urbanrep train'")
    return run_dir


def _check_json_target(path: Path) -> None:
    """Refuse to overwrite a file that is not a metrics report urbanrep wrote."""
    if not path.exists():
        return
    try:
        ours = {"protocol", "tasks"} <= set(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        ours = False
    if not ours:
        raise FolderError(f"{path} exists and is not a metrics report urbanrep wrote; choose another --json file "
                          "(urbanrep never overwrites files it did not write)")


def evaluate_stage(run_dir: str | Path, bundle: CityBundle, config: RunConfig | None = None,
                   json_path: str | Path | None = None, data: HeteroData | None = None) -> dict[str, Any]:
    """Evaluate ``run_dir/embeddings.parquet`` on the bundle's targets.

    With ``evaluate.inputs`` (default) the model's own inputs are scored beside it under the same
    protocol (``metrics["inputs"]``, :mod:`urbanrep.input_baselines`), taken from ``data`` or the
    run folder's ``graph.pt``; without either they are skipped and ``metrics["skipped"]`` says so.

    Without ``json_path`` the metrics and out-of-fold predictions replace ``run_dir``'s
    ``metrics.json`` and ``predictions.parquet`` (the earlier ones are removed first, under the
    run folder's lock); with ``json_path`` the metrics go to that file only and the run folder
    is left as it is.
    """
    from urbanrep.evaluate import run_evaluation

    config = config or RunConfig()
    run_dir = require_run_folder(run_dir)
    path = run_dir / EMBEDDINGS
    if not path.exists():
        raise UrbanRepError(f"{path} does not exist; train first ('urbanrep train' or 'urbanrep run')")
    from urbanrep.evaluate.report import write_report as write_metrics

    if json_path is not None:
        _check_json_target(Path(json_path))
        emb = read_parquet(path, "re-run training to rewrite it").set_index("region_id")
        result = run_evaluation(emb, bundle, config.evaluate)
        _add_input_scores(result.metrics, run_dir, bundle, config, data)
        write_metrics(result.metrics, json_path)
        return result.metrics
    with owned_run_folder(run_dir, keep=True):
        remove_outputs(run_dir, EVAL_OUTPUTS)
        emb = read_parquet(path, "re-run training to rewrite it").set_index("region_id")
        result = run_evaluation(emb, bundle, config.evaluate)
        _add_input_scores(result.metrics, run_dir, bundle, config, data)
        write_metrics(result.metrics, run_dir / METRICS_FILE)
        if len(result.predictions):  # every task skipped (too few regions): no predictions to write
            write_parquet_atomic(result.predictions, run_dir / PREDICTIONS_FILE)
    return result.metrics


def _add_input_scores(metrics: dict[str, Any], run_dir: Path, bundle: CityBundle, config: RunConfig,
                      data: HeteroData | None) -> None:
    """``metrics["inputs"]``: the model's inputs under the embedding's evaluation (``evaluate.inputs``)."""
    if not config.evaluate.inputs:
        return
    from urbanrep.input_baselines import input_tables, score_inputs
    from urbanrep.runconfig import read_run_config

    if data is None and not (run_dir / GRAPH_FILE).exists():
        metrics.setdefault("skipped", {})["inputs"] = (f"no {GRAPH_FILE} in {run_dir} to take the model's inputs "
                                                       "from; evaluate a run folder of 'urbanrep run'")
        return
    if data is None:
        data = load_graph(run_dir / GRAPH_FILE)
    trained = read_run_config(run_dir).model.modalities if (run_dir / "config.json").exists() else None
    tables = input_tables(data, trained)
    if tables:
        metrics["inputs"] = score_inputs(tables, bundle, config.evaluate)
        log.info("scored the model's inputs under the same protocol: %s", ", ".join(tables))


def export_stage(run_dir: str | Path, bundle: CityBundle, config: RunConfig | None = None,
                 out_dir: str | Path | None = None) -> list[Path]:
    """GIS files (and, as configured, figures and the HTML report) of a run folder.

    The run folder is locked while the export runs; earlier export outputs of urbanrep's own
    are removed first, so nothing stale survives (an ``out_dir`` must be new, empty or
    urbanrep's own).
    """
    from urbanrep.folders import GIS

    config = config or RunConfig()
    run_dir = require_run_folder(run_dir)
    with owned_run_folder(run_dir, keep=True):
        if out_dir is not None and Path(out_dir).resolve() != (run_dir / "gis").resolve():
            claim_folder(out_dir, GIS, keep=True)
            remove_temporaries(Path(out_dir))  # left by a killed export
            stale = [p.name for p in Path(out_dir).iterdir() if GIS.owns(p.name) and p.is_file()
                     and not p.name.startswith(".")]
            remove_outputs(out_dir, stale, GIS)
            remove_outputs(run_dir, EXPORT_OUTPUTS[1:])
        else:
            remove_outputs(run_dir, EXPORT_OUTPUTS)
        return _export(run_dir, bundle, config, out_dir)


def _export(run_dir: Path, bundle: CityBundle, config: RunConfig, out_dir: str | Path | None) -> list[Path]:
    from urbanrep.export import export_run

    written = export_run(run_dir, bundle.regions, out_dir, formats=config.export.formats)
    if config.export.report:
        from urbanrep.export import write_report

        written.append(write_report(run_dir, bundle.regions, title=f"urbanrep run: {bundle.name}"))
    elif config.export.figures:
        from urbanrep.export import make_figures

        written.extend(make_figures(run_dir, bundle.regions).values())
    return written


def run_pipeline(dataset: str | Path | None = None, data_root: str | Path | None = None,
                 run_dir: str | Path = "runs/latest", config: RunConfig | None = None,
                 resume: bool = False, nproc: int = 1, overwrite: bool = False) -> RunResult:
    """Every stage for one data set into ``run_dir``: bundle, graph, training, evaluation, export.

    Args:
        dataset: Dataset name or bundle path (None: NYC Manhattan-180); see
            :func:`urbanrep.datasets.load_dataset` for the resolution order.
        data_root: Folder of the source data sets (default ``$URBANREP_DATA`` or ``../shared/data``).
        run_dir: The run folder: new, empty, or a run folder of urbanrep's (never one holding
            files urbanrep did not write). It is locked for the whole run: a second run into
            it fails at once, naming this process.
        config: Settings of every stage (defaults when None).
        resume: Continue training from the newest checkpoint in ``run_dir`` (an earlier run's
            evaluation and export outputs are removed before those stages run again).
        overwrite: Replace an earlier run in ``run_dir`` (its outputs are removed first).
        nproc: Train data-parallel in this many local processes (needs
            ``config.train.mode == "minibatch"``; every other stage runs in this process).

    Returns:
        A :class:`RunResult`; ``run_dir/run.json`` holds the same stage times.
    """
    config = config or RunConfig()
    check_model_size(config)  # the configuration is checked before any stage runs
    run_dir = Path(run_dir)
    claim_folder(run_dir, RUN, overwrite=overwrite, keep=resume, create=False)  # refuse before any work
    stages: dict[str, float] = {}
    with _timed(stages, "bundle"):
        bundle = load_dataset(None if dataset is None else str(dataset), data_root)  # validated
    with owned_run_folder(run_dir, overwrite=overwrite, keep=resume) as run_dir:
        if not resume:
            remove_outputs(run_dir, (BUNDLE_DIR, GRAPH_FILE, "graph.json", *TRAIN_OUTPUTS, *EVAL_OUTPUTS,
                                     *EXPORT_OUTPUTS, RUN_SUMMARY))
        return _run_stages(bundle, run_dir, config, resume, nproc, stages)


def _run_stages(bundle: CityBundle, run_dir: Path, config: RunConfig, resume: bool, nproc: int,
                stages: dict[str, float]) -> RunResult:
    skipped: dict[str, str] = {}
    with _timed(stages, "bundle"):
        write_bundle(bundle, run_dir / BUNDLE_DIR, overwrite=True)
    log.info("%s", bundle.summary_line())
    with _timed(stages, "graph"):
        data, _ = build_graph_file(bundle, run_dir / GRAPH_FILE, config, overwrite=True)
    with _timed(stages, "train"):
        train_stage(data, run_dir, config, resume=resume, nproc=nproc, overwrite=not resume)
    metrics = None
    if _has_evaluation_data(bundle):
        with _timed(stages, "evaluate"):
            metrics = evaluate_stage(run_dir, bundle, config, data=data)
    else:
        remove_outputs(run_dir, EVAL_OUTPUTS)  # an earlier run's metrics must not outlive it
        skipped["evaluate"] = f"bundle {bundle.name} has no targets or labels"
        log.info("evaluation skipped: %s", skipped["evaluate"])
    with _timed(stages, "export"):
        try:
            export_stage(run_dir, bundle, config)
        except ImportError as exc:  # matplotlib missing: GIS files are written, pictures are not
            skipped["figures"] = f"{exc}; install urbanrep[plotting] for maps and the report"
            log.warning("figures skipped: %s", skipped["figures"])
    summary = {"dataset": bundle.name, "bundle": bundle.summary_line(), "stages_s": stages,
               "wall_time_s": round(sum(stages.values()), 3), "skipped": skipped,
               "model_file": str(run_dir / "model.pt")}
    write_text_atomic(run_dir / RUN_SUMMARY, json.dumps(summary, indent=2))
    return RunResult(run_dir=run_dir, bundle=bundle, bundle_summary=bundle.summary_line(), stages=stages,
                     metrics=metrics, skipped=skipped)

