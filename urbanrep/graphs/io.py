"""Writing and reading region graphs: ``graph.pt`` plus a JSON manifest beside it, atomically.

The graph file is a `safetensors <https://huggingface.co/docs/safetensors>`_ file: raw tensors
and a JSON header (the layout of :mod:`urbanrep.graphs.safe_format`). Opening one parses JSON and
copies bytes; it never unpickles, so a graph file received from someone else cannot run code.
The name stays ``graph.pt`` (what the CLI, run folders and older versions use); the format is
recognised by its first bytes, not by its name.

urbanrep <= 0.1 wrote graphs with ``torch.save`` (a pickle, which can run any code when it is
opened). :func:`load_graph` refuses such files with a one-line error saying how to rebuild them,
unless ``trust_legacy_pickle=True`` (CLI: ``--trust-legacy-pickle``) says the file is your own.
"""

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
from urbanrep.graphs.safe_format import (
    FORMAT_VERSION,
    GRAPH_FORMAT,
    graph_from_tensors,
    graph_to_tensors,
    layout_to_json,
    parse_layout,
)
from urbanrep.graphs.schema import GRAPH_SCHEMA_VERSION, graph_counts, validate_graph

log = logging.getLogger(__name__)

#: How graph files are stored (for manifests and benchmarks).
FILE_FORMAT = f"safetensors ({GRAPH_FORMAT} {FORMAT_VERSION})"
#: The CLI flag (and keyword) that opens legacy pickle graph files.
TRUST_FLAG = "--trust-legacy-pickle"

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save since torch 1.6: a zip archive around a pickle
_PICKLE_PROTO = 0x80  # torch.save's legacy format (and plain pickles) start with the PROTO opcode
_HEADER_MAX = 100_000_000  # safetensors' own limit on the JSON header


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


def graph_file_kind(path: str | Path) -> str:
    """What a graph file holds, from its first bytes (nothing is unpickled or parsed further).

    Returns:
        ``"safetensors"`` (the current format), ``"pickle"`` (``torch.save`` / pickle, e.g. a graph
        written by urbanrep <= 0.1) or ``"unknown"``.
    """
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == _ZIP_MAGIC or (head and head[0] == _PICKLE_PROTO):
        return "pickle"
    if len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= _HEADER_MAX:
        return "safetensors"
    return "unknown"


def save_graph(data: HeteroData, report: dict[str, Any], path: str | Path) -> Path:
    """Validate ``data`` and write it to ``path`` (safetensors) with a JSON manifest beside it.

    Every tensor of every store is written as it is (dtype and shape kept); every other
    attribute (``region_ids``, ``crs``, ``modalities``, ``feature_names``, ``num_nodes``...) goes
    into the file's JSON header, so :func:`load_graph` gives back an identical graph. The manifest
    (``path.with_suffix('.json')``) holds the schema version, the input hashes
    (``report['inputs']``), the node/edge counts (:func:`~urbanrep.graphs.schema.graph_counts`)
    and the build report. Both files are written atomically; the graph first.

    Returns:
        The manifest path.

    Raises:
        GraphError: the graph is off-schema, an attribute is neither a tensor nor a plain value,
            or ``path`` ends in ``.json``.
    """
    from safetensors.torch import save_file

    validate_graph(data)
    path = Path(path)
    if path.suffix == ".json":
        raise GraphError(f"graph path {path} ends in .json, which is the manifest's name; use e.g. graph.pt")
    tensors, layout = graph_to_tensors(data)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": GRAPH_FORMAT, "format_version": str(FORMAT_VERSION),
                                                "layout": layout_to_json(layout)})
    manifest = {
        "format": GRAPH_FORMAT,
        "file_format": FILE_FORMAT,
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


def _rebuild_hint(path: Path) -> str:
    return f"rebuild it with 'urbanrep build-graphs BUNDLE --out {path}'"


def _load_safetensors(path: Path) -> HeteroData:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            if meta.get("format") != GRAPH_FORMAT:
                raise GraphError(f"{path} is a safetensors file but not a region graph (its header says format "
                                 f"{meta.get('format')!r}); {_rebuild_hint(path)}")
            layout = parse_layout(meta.get("layout", ""), str(path))
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except GraphError:
        raise
    except Exception as exc:  # safetensors raises its own error type for corrupt headers / truncated data
        msg = " ".join(str(exc).split())[:200]
        raise GraphError(f"cannot read graph file {path} ({type(exc).__name__}: {msg}); {_rebuild_hint(path)}"
                         ) from exc
    return graph_from_tensors(tensors, layout, str(path))


def _load_legacy_pickle(path: Path) -> HeteroData:
    log.warning("reading %s by unpickling it (%s): a pickle can run any code when it is opened, so do this only "
                "for a graph file you wrote yourself; save it again with urbanrep.graphs.save_graph or rebuild "
                "it with 'urbanrep build-graphs' to get a file that opens safely", path, TRUST_FLAG)
    try:
        data = torch.load(path, weights_only=False, map_location="cpu")
    except Exception as exc:  # truncated / corrupt pickles raise several types
        msg = " ".join(str(exc).split())[:200]
        raise GraphError(f"cannot read graph file {path} ({type(exc).__name__}: {msg}); {_rebuild_hint(path)}"
                         ) from exc
    if not isinstance(data, HeteroData):
        raise GraphError(f"{path} holds a {type(data).__name__}, not a region graph; {_rebuild_hint(path)}")
    return data


def load_graph(path: str | Path, *, trust_legacy_pickle: bool = False) -> HeteroData:
    """Read a graph written by :func:`save_graph` and validate it against the schema.

    Reading never runs code from the file: it is a safetensors file (raw tensors and a JSON
    header). Graph files written by urbanrep <= 0.1 are pickles and are refused, unless
    ``trust_legacy_pickle`` is True: then the file is unpickled (``torch.load(weights_only=False)``,
    which runs whatever code the file holds) with a warning. Pass it only for files you wrote.

    Args:
        path: The graph file (``graph.pt``).
        trust_legacy_pickle: Open a legacy pickle graph file (unsafe for files from others).

    Raises:
        GraphError: the file is missing, unreadable, a refused pickle, not a region graph or
            off-schema (one line naming the file and the fix).
    """
    path = Path(path)
    if not path.is_file():
        raise GraphError(f"graph file {path} does not exist; build it with 'urbanrep build-graphs BUNDLE --out {path}'")
    kind = graph_file_kind(path)
    if kind == "safetensors":
        data = _load_safetensors(path)
    elif kind == "pickle" and trust_legacy_pickle:
        data = _load_legacy_pickle(path)
    elif kind == "pickle":
        raise GraphError(f"{path} is a pickle (torch.save) file, the graph format of urbanrep <= 0.1, and pickles "
                         f"can run code when opened, so urbanrep does not open it: {_rebuild_hint(path)}, or, only "
                         f"if you wrote this file yourself, pass {TRUST_FLAG} (load_graph(..., "
                         "trust_legacy_pickle=True))")
    else:
        raise GraphError(f"{path} is not a region graph file (neither the safetensors format nor a legacy pickle); "
                         f"{_rebuild_hint(path)}")
    try:
        return validate_graph(data)
    except GraphError as exc:
        raise GraphError(f"{path}: {exc}; {_rebuild_hint(path)}") from exc


def read_graph_manifest(path: str | Path) -> dict[str, Any]:
    """The JSON manifest beside a graph file."""
    mpath = manifest_path(path)
    if not mpath.exists():
        raise GraphError(f"graph manifest {mpath} is missing; rewrite the graph with save_graph")
    try:
        return json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GraphError(f"cannot parse {mpath}: {exc}; rewrite the graph with save_graph") from exc
