"""The public Python API: ``UrbanRep(config).fit(bundle)`` and ``transform(bundle)``.

>>> from urbanrep import UrbanRep, RunConfig
>>> from urbanrep.datasets import load_dataset
>>> bundle = load_dataset("nyc_manhattan180")
>>> model = UrbanRep().fit(bundle)
>>> emb = model.transform(bundle)              # DataFrame [N, C] indexed by region_id
>>> model.save("models/nyc"); same = UrbanRep.load("models/nyc")

``fit`` builds the bundle's region graph (:func:`urbanrep.graphs.build_graph`) and trains the
experts, the fusion and the contrastive heads on it (:func:`urbanrep.train.train`); nothing in a
bundle's targets or labels is read. ``transform`` builds the graph of any bundle with the same
graph configuration and embeds it with the trained weights; the bundle must offer the modalities
and feature widths the model was trained with (the same city, or a city prepared alike).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch_geometric.data import HeteroData

from urbanrep.atomic import write_text_atomic
from urbanrep.bundle import CityBundle
from urbanrep.errors import GraphError, UrbanRepError
from urbanrep.graphs import build_graph
from urbanrep.graphs.schema import REGION, feature_key
from urbanrep.network import RegionModel
from urbanrep.runconfig import CONFIG_FILE, RunConfig, read_run_config
from urbanrep.train import (
    MODEL_FILE,
    TrainResult,
    embeddings_frame,
    load_model,
    resolve_device,
    save_model,
    train,
)

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
                f"{widths[modality]}; embed bundles prepared like the training city (same categories/classes)")


def embed_graph(model: RegionModel, data: HeteroData, device: str = "cpu") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Embed every region of ``data`` with a trained model (eval mode, no gradients).

    Args:
        model: A trained :class:`~urbanrep.network.RegionModel`.
        data: A region graph with the modalities (and feature widths) the model was trained on.
        device: Where to run (``"auto"``, ``"cpu"``, ``"cuda"``...).

    Returns:
        ``(embeddings [N, C], fusion_weights [N, M])``, both indexed by ``region_id``.
    """
    model.check_graph(data)
    _check_widths(model, data)
    dev = resolve_device(device)
    model = model.to(dev).eval()
    with torch.no_grad():
        out = model(data.to(dev))
    ids = pd.Index(list(data.region_ids), name="region_id")
    emb = embeddings_frame(list(ids), out.embedding.float().cpu().numpy())
    weights = pd.DataFrame(out.fusion_weights.float().cpu().numpy(), columns=list(out.modalities), index=ids)
    return emb, weights


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
        return f"UrbanRep({state}, epochs={self.config.train.epochs}, seed={self.config.train.seed})"

    def build_graph(self, bundle: CityBundle) -> tuple[HeteroData, dict[str, Any]]:
        """The region graph of ``bundle`` under this configuration, and the build report."""
        return build_graph(bundle, self.config.graph)

    def fit(self, bundle: CityBundle | HeteroData, run_dir: str | Path | None = None, resume: bool = False) -> UrbanRep:
        """Build the graph of ``bundle`` (or take a prebuilt graph) and train on it.

        Args:
            bundle: A city bundle, or a region graph from :func:`urbanrep.graphs.build_graph`.
            run_dir: Where checkpoints, ``loss.csv``, ``embeddings.parquet``, ``model.pt`` and
                ``config.json`` go (nothing is written when None).
            resume: Continue from the newest checkpoint in ``run_dir``.

        Returns:
            ``self``.
        """
        if isinstance(bundle, HeteroData):
            data, report = bundle, None
        else:
            data, report = self.build_graph(bundle)
        if run_dir is not None:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
            self._write_config(run_dir)
        self.result_ = train(data, self.config.model, self.config.train, run_dir=run_dir, resume=resume)
        self.model_ = self.result_.model
        self.graph_, self.graph_report_ = data, report
        return self

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

    def transform(self, bundle: CityBundle | HeteroData | None = None) -> pd.DataFrame:
        """Embeddings ``[N, C]`` indexed by ``region_id`` (None: the training city)."""
        return embed_graph(self._require_model(), self._graph_of(bundle), self.config.train.device)[0]

    def fit_transform(self, bundle: CityBundle, run_dir: str | Path | None = None) -> pd.DataFrame:
        """:meth:`fit` then the training city's embeddings."""
        self.fit(bundle, run_dir=run_dir)
        assert self.result_ is not None
        return self.result_.embeddings_frame()

    def fusion_weights(self, bundle: CityBundle | HeteroData | None = None) -> pd.DataFrame:
        """Per-region fusion weight of each modality ``[N, M]`` indexed by ``region_id``."""
        return embed_graph(self._require_model(), self._graph_of(bundle), self.config.train.device)[1]

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
        self = cls(config)
        self.model_ = load_model(folder / MODEL_FILE, device=device)
        return self
