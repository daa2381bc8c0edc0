"""Writing and reading region graphs: ``graph.pt`` plus a JSON manifest beside it, atomically."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch_geometric.data import HeteroData

from urbanrep.atomic import atomic_path, write_text_atomic
from urbanrep.errors import GraphError
from urbanrep.graphs.schema import GRAPH_SCHEMA_VERSION, graph_counts, validate_graph

log = logging.getLogger(__name__)

GRAPH_FORMAT = "urbanrep-region-graph"


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def manifest_path(path: str | Path) -> Path:
    """The JSON manifest that goes with a graph file (``graph.pt`` → ``graph.json``)."""
    return Path(path).with_suffix(".json")


def save_graph(data: HeteroData, report: dict[str, Any], path: str | Path) -> Path:
    """Validate ``data`` and write it to ``path`` (``torch.save``) with a JSON manifest beside it.

    The manifest (``path.with_suffix('.json')``) holds the schema version, the input hashes
    (``report['inputs']``), the node/edge counts (:func:`~urbanrep.graphs.schema.graph_counts`)
    and the build report. Both files are written atomically; the graph first.

    Returns:
        The manifest path.
    """
    validate_graph(data)
    path = Path(path)
    if path.suffix == ".json":
        raise GraphError(f"graph path {path} ends in .json, which is the manifest's name; use e.g. graph.pt")
    with atomic_path(path) as tmp:
        torch.save(data, tmp)
    manifest = {
        "format": GRAPH_FORMAT,
        "schema_version": GRAPH_SCHEMA_VERSION,
        "graph_file": path.name,
        "bundle": report.get("bundle"),
        "crs": data.crs,
        "inputs": report.get("inputs"),
        "counts": graph_counts(data),
        "feature_names": getattr(data, "feature_names", None),
        "report": {k: v for k, v in report.items() if k != "inputs"},
        "versions": {"torch": torch.__version__},
    }
    mpath = manifest_path(path)
    write_text_atomic(mpath, json.dumps(manifest, indent=2, default=_json_default))
    log.info("wrote region graph %s (%s)", path, mpath.name)
    return mpath


def load_graph(path: str | Path) -> HeteroData:
    """Read a graph written by :func:`save_graph` and validate it.

    The file is unpickled with ``torch.load(weights_only=False)`` because a ``HeteroData`` is
    not a plain tensor dict: only load graph files you (or urbanrep) wrote.

    Raises:
        GraphError: the file is missing, unreadable, not a region graph or off-schema.
    """
    path = Path(path)
    if not path.exists():
        raise GraphError(f"graph file {path} does not exist; build it with urbanrep.graphs.build_graph + save_graph")
    try:
        data = torch.load(path, weights_only=False, map_location="cpu")
    except Exception as exc:  # truncated / corrupt pickles raise several types
        raise GraphError(f"cannot read graph file {path} ({type(exc).__name__}: {exc}); rebuild it") from exc
    if not isinstance(data, HeteroData):
        raise GraphError(f"{path} holds a {type(data).__name__}, not a region graph; rebuild it")
    return validate_graph(data)


def read_graph_manifest(path: str | Path) -> dict[str, Any]:
    """The JSON manifest beside a graph file."""
    mpath = manifest_path(path)
    if not mpath.exists():
        raise GraphError(f"graph manifest {mpath} is missing; rewrite the graph with save_graph")
    try:
        return json.loads(mpath.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise GraphError(f"cannot parse {mpath}: {exc}; rewrite the graph with save_graph") from exc
