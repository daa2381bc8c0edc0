"""The public Python API: ``UrbanRep(config).fit(bundle)`` and ``transform(bundle)``.

>>> from urbanrep import UrbanRep, RunConfig
>>> from urbanrep.datasets import load_dataset
>>> bundle = load_dataset("nyc_manhattan180")
>>> model = UrbanRep().fit(bundle)
>>> emb = model.transform(bundle)              # DataFrame [N, C] indexed by region_id
>>> model.save("models/nyc"); same = UrbanRep.load("models/nyc")

``fit`` builds the bundle's region graph (:func:`urbanrep.graphs.build_graph`) and trains the
experts, the fusion and the contrastive heads on it (:func:`urbanrep.train.train`); nothing in a
bundle's targets or labels is read. With ``config.train.mode == "minibatch"`` it trains on
mini-batches (:mod:`urbanrep.minibatch`, settings in ``config.minibatch``), and
``fit(..., nproc=4)`` runs that data-parallel in 4 local processes (:mod:`urbanrep.distributed`);
under torchrun every launched process calls ``fit`` with ``nproc=1``. ``transform`` builds the graph of any bundle with the same
graph configuration and embeds it with the trained weights; the bundle must offer the modalities
and feature widths the model was trained with (the same city, or a city prepared alike).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch_geometric.data import HeteroData

from urbanrep.atomic import write_text_atomic
from urbanrep.bundle import CityBundle
from urbanrep.distributed import current_ranks, spawn
from urbanrep.errors import ConfigError, GraphError, UrbanRepError
from urbanrep.folders import RUN, claim_folder
from urbanrep.graphs import build_graph
from urbanrep.graphs.schema import REGION, feature_key
from urbanrep.minibatch import MiniBatchConfig, embed_minibatch
from urbanrep.network import RegionModel
from urbanrep.progress import progress_logging
from urbanrep.runconfig import CONFIG_FILE, RunConfig, read_run_config
from urbanrep.safe_files import load_weights_only
from urbanrep.train import (
    EMBEDDINGS,
    FUSION_WEIGHTS,
    MODEL_FILE,
    TrainResult,
    embeddings_frame,
    latest_checkpoint,
    load_model,
    resolve_device,
    save_model,
    train,
)
from urbanrep.written import COLUMNS_ATTR

log = logging.getLogger(__name__)

__all__ = ["UrbanRep", "embed_graph"]


def _check_widths(model: RegionModel, data: HeteroData) -> None:
    widths = dict(model.metadata.in_channels)
    for modality in model.modalities:
        key = feature_key(modality)
        if modality == "street_view" or key not in data[REGION]:
            continue
        have = int(data[REGION][key].shape[-1])
        if modality in widths and have != widths[modality]:
            raise GraphError(
                f"modality {modality!r} has {have} features in this graph but the model was trained on "
                f"{widths[modality]}; give both cities the same fixed category lists: prepare them with "
                f"'urbanrep prepare osm' (vocabulary urbanrep-osm) or set the same CityBundle.categories")


def embed_graph(model: RegionModel, data: HeteroData, device: str = "cpu",
                minibatch: MiniBatchConfig | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Embed every region of ``data`` with a trained model (eval mode, no gradients).

    Args:
        model: A trained :class:`~urbanrep.network.RegionModel`.
        data: A region graph with the modalities (and feature widths) the model was trained on.
        device: Where to run (``"auto"``, ``"cpu"``, ``"cuda"``...).
        minibatch: With ``inference="sampled"``, embed in batches over sampled subgraphs
            (:func:`urbanrep.minibatch.embed_minibatch`; for graphs whose full forward pass does
            not fit); otherwise one exact full-graph pass.

    Returns:
        ``(embeddings [N, C], fusion_weights [N, M])``, both indexed by ``region_id``.
    """
    model.check_graph(data)
    _check_widths(model, data)
    dev = resolve_device(device)
    model = model.to(dev).eval()
    if minibatch is not None and minibatch.inference == "sampled":
        emb_np, weights_np = embed_minibatch(model, data, minibatch, dev)
    else:
        with torch.no_grad():
            out = model(data.to(dev))
        emb_np = model.final_embedding(out.embedding.float().cpu().numpy(), data)
        weights_np = out.fusion_weights.float().cpu().numpy()
    ids = pd.Index(list(data.region_ids), name="region_id")
    emb = embeddings_frame(list(ids), emb_np, model.written_columns(data))
    weights = pd.DataFrame(weights_np, columns=list(model.modalities), index=ids)
    return emb, weights


def _is_main_process() -> bool:
    """Rank 0 of a data-parallel job (or a single process): the one that writes files."""
    return os.environ.get("RANK", "0") == "0" and current_ranks().is_main


def _fit_worker(config: RunConfig, data: HeteroData, run_dir: str, resume: bool, nproc: int) -> None:
    """One process of ``UrbanRep.fit(..., nproc=N)`` (module level, so that it can be spawned)."""
    if config.train.num_threads == 0:  # share the cores instead of every process taking all of them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // nproc))
    UrbanRep(config).fit(data, run_dir=run_dir, resume=resume)


def _result_from_run_dir(run_dir: Path) -> TrainResult:
    """What rank 0 of a spawned run wrote, read back as a :class:`TrainResult` (model on CPU)."""
    ckpt_path = latest_checkpoint(run_dir)
    if ckpt_path is None or not (run_dir / MODEL_FILE).exists():
        raise UrbanRepError(f"the training processes wrote no checkpoint or {MODEL_FILE} into {run_dir}; "
                            "rerun with nproc=1 to see the error")
    ckpt = load_weights_only(ckpt_path, "checkpoint", "rerun the training")
    model = load_model(run_dir / MODEL_FILE)
    emb = pd.read_parquet(run_dir / EMBEDDINGS)
    weights = pd.read_parquet(run_dir / FUSION_WEIGHTS)
    history = [dict(r) for r in ckpt["history"]]
    return TrainResult(model=model, embeddings=emb.drop(columns="region_id").to_numpy(np.float32),
                       fusion_weights=weights[list(model.modalities)].to_numpy(np.float32),
                       modalities=model.modalities, region_ids=list(emb["region_id"]), history=history,
                       epochs_run=int(history[-1]["epoch"]) if history else 0, stopped_early=bool(ckpt["stopped"]),
                       run_dir=run_dir, columns=list(emb.attrs.get(COLUMNS_ATTR, [])))


class UrbanRep:
    """Region embeddings from a city bundle, scikit-learn style.

    Args:
        config: Graph, model, training, evaluation and export settings (defaults when None).

    Attributes:
        model_: The trained network (after :meth:`fit` or :meth:`load`).
        result_: What training returned (after :meth:`fit`): loss history, wall time...
        graph_: The training graph (after :meth:`fit`).
    """

    def __init__(self, config: RunConfig | None = None) -> None:
        self.config = config or RunConfig()
        self.model_: RegionModel | None = None
        self.result_: TrainResult | None = None
        self.graph_: HeteroData | None = None
        self.graph_report_: dict[str, Any] | None = None

    def __repr__(self) -> str:
        state = "fitted" if self.model_ is not None else "not fitted"
        return (f"UrbanRep({state}, mode={self.config.train.mode}, epochs={self.config.train.epochs}, "
                f"seed={self.config.train.seed})")

    def build_graph(self, bundle: CityBundle) -> tuple[HeteroData, dict[str, Any]]:
        """The region graph of ``bundle`` under this configuration, and the build report."""
        return build_graph(bundle, self.config.graph)

    def fit(self, bundle: CityBundle | HeteroData, run_dir: str | Path | None = None, resume: bool = False,
            nproc: int = 1, progress: bool = True) -> UrbanRep:
        """Build the graph of ``bundle`` (or take a prebuilt graph) and train on it.

        ``config.train.mode`` picks full-graph (default) or mini-batch
        training (``config.minibatch``). Inside a torchrun job every process calls ``fit`` and
        trains its share of each epoch; rank 0 writes the files.

        Args:
            bundle: A city bundle, or a region graph from :func:`urbanrep.graphs.build_graph`.
            run_dir: Where checkpoints, ``loss.csv``, ``embeddings.parquet``, ``model.pt`` and
                ``config.json`` go (nothing is written when None, except with ``nproc > 1``,
                which trains in a temporary folder).
            resume: Continue from the newest checkpoint in ``run_dir``.
            nproc: Train data-parallel in this many local processes (mini-batch mode only; on
                CUDA one per GPU, at most ``torch.cuda.device_count()``). The trained model is
                read back from ``run_dir`` onto the CPU.
            progress: Print the training progress (epochs, s/epoch, ETA) and the thread choice
                to stderr as the CLI does, unless logging is configured already (then the
                ``urbanrep`` log records go where it says).

        Returns:
            ``self``.

        Raises:
            ConfigError: ``nproc > 1`` without ``train.mode=minibatch``, or more processes than GPUs.
        """
        with progress_logging(progress):
            if isinstance(bundle, HeteroData):
                data, report = bundle, None
            else:
                data, report = self.build_graph(bundle)
            if nproc > 1:
                self.result_ = self._fit_spawned(data, run_dir, resume, nproc)
            else:
                if run_dir is not None:
                    claim_folder(run_dir, RUN, keep=True)  # never a folder holding foreign files
                    if _is_main_process():
                        self._write_config(run_dir)
                self.result_ = train(data, self.config.model, self.config.train, run_dir=run_dir, resume=resume,
                                     minibatch_config=self.config.minibatch)
        self.model_ = self.result_.model
        self.graph_, self.graph_report_ = data, report
        return self

    def _fit_spawned(self, data: HeteroData, run_dir: str | Path | None, resume: bool, nproc: int) -> TrainResult:
        tc = self.config.train
        if tc.mode != "minibatch":
            raise ConfigError(f"nproc={nproc} trains data-parallel, which needs mini-batch training; "
                              "set train.mode=minibatch (--set train.mode=minibatch) or use nproc=1")
        if resolve_device(tc.device).type == "cuda" and nproc > torch.cuda.device_count():
            raise ConfigError(f"nproc={nproc} but only {torch.cuda.device_count()} CUDA device(s) are visible; "
                              "use one process per GPU or train.device=cpu")
        if tc.device.startswith("cuda:"):
            raise ConfigError(f"train.device={tc.device!r} pins one GPU; with nproc > 1 use device 'cuda' or "
                              "'auto' (process k takes GPU k)")
        with tempfile.TemporaryDirectory(prefix="urbanrep-fit-") as tmp:
            out = Path(run_dir) if run_dir is not None else Path(tmp)
            claim_folder(out, RUN, keep=True)
            self._write_config(out)
            spawn(_fit_worker, nproc, (self.config, data, str(out), resume, nproc))
            result = _result_from_run_dir(out)
            if run_dir is None:
                result.run_dir = None
        return result

    def _require_model(self) -> RegionModel:
        if self.model_ is None:
            raise UrbanRepError("this UrbanRep is not fitted: call fit(bundle) or UrbanRep.load(path) first")
        return self.model_

    def _graph_of(self, bundle: CityBundle | HeteroData | None) -> HeteroData:
        if isinstance(bundle, HeteroData):
            return bundle
        if bundle is None:
            if self.graph_ is None:
                raise UrbanRepError("transform() without a bundle needs a model fitted in this session; pass a bundle")
            return self.graph_
        return self.build_graph(bundle)[0]

    def _embed(self, bundle: CityBundle | HeteroData | None) -> tuple[pd.DataFrame, pd.DataFrame]:
        model = self._require_model()
        for taken in model.take_written_settings(self.config.model, "UrbanRep.config.model"):
            log.info("written embedding: %s", taken)
        minibatch = self.config.minibatch if self.config.train.mode == "minibatch" else None
        return embed_graph(model, self._graph_of(bundle), self.config.train.device, minibatch)

    def transform(self, bundle: CityBundle | HeteroData | None = None) -> pd.DataFrame:
        """Embeddings ``[N, C]`` indexed by ``region_id`` (None: the training city).

        In mini-batch mode with ``minibatch.inference="sampled"`` the regions are embedded in
        batches over sampled subgraphs; otherwise in one exact full-graph pass.
        """
        return self._embed(bundle)[0]

    def fit_transform(self, bundle: CityBundle, run_dir: str | Path | None = None) -> pd.DataFrame:
        """:meth:`fit` then the training city's embeddings."""
        self.fit(bundle, run_dir=run_dir)
        assert self.result_ is not None
        return self.result_.embeddings_frame()

    def fusion_weights(self, bundle: CityBundle | HeteroData | None = None) -> pd.DataFrame:
        """Per-region fusion weight of each modality ``[N, M]`` indexed by ``region_id``."""
        return self._embed(bundle)[1]

    def evaluate(self, bundle: CityBundle, embeddings: pd.DataFrame | None = None) -> dict[str, Any]:
        """Downstream metrics of the embedding on the bundle's targets and labels.

        Uses ``config.evaluate`` (strict protocol by default); the probes are fit on training
        folds only and never feed back into the model.
        """
        from urbanrep.evaluate import evaluate_embeddings

        emb = embeddings if embeddings is not None else self.transform(bundle)
        return evaluate_embeddings(emb, bundle, self.config.evaluate)

    def _write_config(self, folder: str | Path) -> None:
        write_text_atomic(Path(folder) / CONFIG_FILE, json.dumps(self.config.to_dict(), indent=2))

    def save(self, folder: str | Path) -> Path:
        """Write ``model.pt`` and ``config.json`` into ``folder`` (atomically); returns the folder."""
        model = self._require_model()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_model(model, folder / MODEL_FILE, self.config.train)
        self._write_config(folder)
        return folder

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu") -> UrbanRep:
        """Load a model saved by :meth:`save` (or a run folder written by ``urbanrep train``/``run``)."""
        folder = Path(folder)
        if not (folder / MODEL_FILE).exists():
            raise UrbanRepError(f"{folder} holds no {MODEL_FILE}; pass a folder written by UrbanRep.save, "
                                "'urbanrep train' or 'urbanrep run'")
        config = read_run_config(folder) if (folder / CONFIG_FILE).exists() else RunConfig()
        model = load_model(folder / MODEL_FILE, device=device)
        # the model's own settings are the truth (a config.json fills settings added since with today's defaults)
        self = cls(dataclasses.replace(config, model=model.config))
        self.model_ = model
        return self
