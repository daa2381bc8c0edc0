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
from collections.abc import Iterator
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
from urbanrep.graphs import build_graph, load_graph, save_graph
from urbanrep.model import UrbanRep, embed_graph
from urbanrep.runconfig import RunConfig
from urbanrep.train import EMBEDDINGS, FUSION_WEIGHTS

log = logging.getLogger(__name__)

__all__ = [
    "BUNDLE_DIR", "GRAPH_FILE", "METRICS_FILE", "PREDICTIONS_FILE", "RUN_SUMMARY", "RunResult",
    "build_graph_file", "embed_stage", "evaluate_stage", "export_stage", "resolve_bundle", "run_pipeline",
    "train_stage",
]

BUNDLE_DIR = "bundle"
GRAPH_FILE = "graph.pt"
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.parquet"
RUN_SUMMARY = "run.json"


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
    stages[name] = round(time.perf_counter() - t0, 3)
    log.info("stage %s done in %.1f s", name, stages[name])


def resolve_bundle(source: str | Path | None, data_root: str | Path | None = None) -> CityBundle:
    """A bundle from a dataset name or bundle path, or the ``bundle/`` of a run folder."""
    if source is not None and (Path(source) / BUNDLE_DIR / MANIFEST).exists():
        return read_bundle(Path(source) / BUNDLE_DIR)
    return load_dataset(None if source is None else str(source), data_root)


def build_graph_file(bundle: CityBundle, out: str | Path, config: RunConfig | None = None
                     ) -> tuple[HeteroData, dict[str, Any]]:
    """Build ``bundle``'s region graph and write it (and ``graph.json`` beside it) to ``out``."""
    config = config or RunConfig()
    data, report = build_graph(bundle, config.graph)
    save_graph(data, report, out)
    return data, report


def _read_graph(source: str | Path) -> HeteroData:
    path = Path(source)
    if path.is_dir():
        path = path / GRAPH_FILE
    if not path.exists():
        raise UrbanRepError(f"graph file {path} does not exist; write it with 'urbanrep build-graphs BUNDLE --out {path}'")
    return load_graph(path)


def train_stage(graph: HeteroData | str | Path, run_dir: str | Path | None, config: RunConfig | None = None,
                resume: bool = False, nproc: int = 1) -> UrbanRep:
    """Train on a graph (object, ``.pt`` file or folder holding ``graph.pt``) into ``run_dir``.

    ``config.train.mode`` picks full-graph or mini-batch training; ``nproc > 1`` trains
    mini-batches data-parallel in that many local processes (see :meth:`UrbanRep.fit`).
    """
    data = graph if isinstance(graph, HeteroData) else _read_graph(graph)
    return UrbanRep(config).fit(data, run_dir=run_dir, resume=resume, nproc=nproc)


def embed_stage(model_dir: str | Path, bundle: CityBundle, out_dir: str | Path,
                config: RunConfig | None = None) -> pd.DataFrame:
    """Apply the model in ``model_dir`` to ``bundle``; write embeddings and fusion weights to ``out_dir``."""
    api = UrbanRep.load(model_dir)
    if config is not None:
        api.config = config
    data, report = api.build_graph(bundle)
    minibatch = api.config.minibatch if api.config.train.mode == "minibatch" else None
    emb, weights = embed_graph(api._require_model(), data, api.config.train.device, minibatch)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(emb.reset_index(), out / EMBEDDINGS)
    write_parquet_atomic(weights.reset_index(), out / FUSION_WEIGHTS)
    log.info("embedded %d regions of %s with the model in %s", len(emb), bundle.name, model_dir)
    return emb


def _has_evaluation_data(bundle: CityBundle) -> bool:
    has_targets = bundle.targets is not None and len(bundle.targets) > 0
    has_labels = bundle.labels is not None and len(bundle.labels) > 0
    return has_targets or has_labels


def evaluate_stage(run_dir: str | Path, bundle: CityBundle, config: RunConfig | None = None,
                   json_path: str | Path | None = None) -> dict[str, Any]:
    """Evaluate ``run_dir/embeddings.parquet`` on the bundle's targets; write metrics and predictions."""
    from urbanrep.evaluate import run_evaluation

    config = config or RunConfig()
    run_dir = Path(run_dir)
    path = run_dir / EMBEDDINGS
    if not path.exists():
        raise UrbanRepError(f"{path} does not exist; train first ('urbanrep train' or 'urbanrep run')")
    emb = pd.read_parquet(path).set_index("region_id")
    result = run_evaluation(emb, bundle, config.evaluate)
    from urbanrep.evaluate.report import write_report as write_metrics

    write_metrics(result.metrics, run_dir / METRICS_FILE)
    if json_path is not None and Path(json_path) != run_dir / METRICS_FILE:
        write_metrics(result.metrics, json_path)
    write_parquet_atomic(result.predictions, run_dir / PREDICTIONS_FILE)
    return result.metrics


def export_stage(run_dir: str | Path, bundle: CityBundle, config: RunConfig | None = None,
                 out_dir: str | Path | None = None) -> list[Path]:
    """GIS files (and, as configured, figures and the HTML report) of a run folder."""
    from urbanrep.export import export_run

    config = config or RunConfig()
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
                 resume: bool = False, nproc: int = 1) -> RunResult:
    """Every stage for one data set into ``run_dir``: bundle, graph, training, evaluation, export.

    Args:
        dataset: Dataset name or bundle path (None: NYC Manhattan-180); see
            :func:`urbanrep.datasets.load_dataset` for the resolution order.
        data_root: Folder of the source data sets (default ``$URBANREP_DATA`` or ``../shared/data``).
        run_dir: The run folder (created; files in it are replaced).
        config: Settings of every stage (defaults when None).
        resume: Continue training from the newest checkpoint in ``run_dir``.
        nproc: Train data-parallel in this many local processes (needs
            ``config.train.mode == "minibatch"``; every other stage runs in this process).

    Returns:
        A :class:`RunResult`; ``run_dir/run.json`` holds the same stage times.
    """
    config = config or RunConfig()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    stages: dict[str, float] = {}
    skipped: dict[str, str] = {}
    with _timed(stages, "bundle"):
        bundle = load_dataset(None if dataset is None else str(dataset), data_root)
        write_bundle(bundle, run_dir / BUNDLE_DIR)
    log.info("%s", bundle.summary_line())
    with _timed(stages, "graph"):
        data, _ = build_graph_file(bundle, run_dir / GRAPH_FILE, config)
    with _timed(stages, "train"):
        train_stage(data, run_dir, config, resume=resume, nproc=nproc)
    metrics = None
    if _has_evaluation_data(bundle):
        with _timed(stages, "evaluate"):
            metrics = evaluate_stage(run_dir, bundle, config)
    else:
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

