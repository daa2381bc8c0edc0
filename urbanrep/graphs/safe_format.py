"""The region graph as plain tensors plus a JSON layout: a file format that cannot run code when read.

A :class:`~torch_geometric.data.HeteroData` is split into

* **tensors**: every tensor attribute of every store, named ``graph/<key>``, ``node/<type>/<key>``
  or ``edge/<src>__<relation>__<dst>/<key>`` (CPU, contiguous, one storage each), and
* **a layout** (JSON): the stores in order (graph, node types, edge types) and, per store, its
  attributes in order, each either the name of a tensor or a plain JSON value (``str``, ``int``,
  ``float``, ``bool``, ``None``, lists, tuples and dicts with ``str`` keys; ``region_ids``,
  ``crs``, ``modalities``, ``feature_names``, ``num_nodes``...).

:mod:`urbanrep.graphs.io` writes both into one `safetensors <https://huggingface.co/docs/safetensors>`_
file (the layout in its header metadata). Reading it parses a JSON header and copies raw tensor
bytes: no pickle, no object construction beyond tensors and JSON values, so a crafted file can
at worst fail validation. :func:`graph_from_tensors` checks the layout against the tensors it
was given and rebuilds the graph; the caller validates it against the schema.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from torch_geometric.data import HeteroData

from urbanrep.errors import GraphError

#: The ``format`` key of a graph file's header metadata.
GRAPH_FORMAT = "urbanrep-region-graph"
#: Version of the file layout (1 was a pickled ``HeteroData`` written by ``torch.save``).
FORMAT_VERSION = 2

_TUPLE = "__tuple__"
_SCALARS = (str, int, float, bool, type(None))


def _encode(value: Any, where: str) -> Any:
    """A plain Python value as JSON-ready data (tuples tagged so that they come back as tuples)."""
    if type(value) in _SCALARS:
        return value
    if type(value) is list:
        return [v if type(v) in _SCALARS else _encode(v, where) for v in value]
    if type(value) is tuple:
        return {_TUPLE: [_encode(v, where) for v in value]}
    if type(value) is dict:
        bad = [k for k in value if type(k) is not str or k == _TUPLE]
        if bad:
            raise GraphError(f"graph attribute {where} is a dict with key {bad[0]!r}; a region graph file stores "
                             "dicts with str keys only")
        return {k: _encode(v, f"{where}[{k!r}]") for k, v in value.items()}
    raise GraphError(f"graph attribute {where} holds a {type(value).__module__}.{type(value).__qualname__}; a "
                     "region graph file stores tensors and plain values only (str, int, float, bool, None, "
                     "lists, tuples, dicts with str keys): convert it before saving")


def _decode(value: Any) -> Any:
    if type(value) is list:
        return [_decode(v) if type(v) in (list, dict) else v for v in value]
    if type(value) is dict:
        if set(value) == {_TUPLE} and type(value[_TUPLE]) is list:
            return tuple(_decode(v) for v in value[_TUPLE])
        return {k: _decode(v) for k, v in value.items()}
    return value


def _store_name(kind: str, type_: Any) -> str:
    if kind == "graph":
        return "graph"
    return f"{kind}/{type_ if kind == 'node' else '__'.join(type_)}"


def _own(tensor: torch.Tensor, seen: set[int]) -> torch.Tensor:
    """``tensor`` on the CPU, contiguous and with a storage no other saved tensor shares."""
    t = tensor.detach().to("cpu").contiguous()
    if t.numel() == 0:
        return torch.empty(t.shape, dtype=t.dtype)
    ptr = t.untyped_storage().data_ptr()
    if ptr in seen or t.untyped_storage().nbytes() != t.numel() * t.element_size():
        t = t.clone()
        ptr = t.untyped_storage().data_ptr()
    seen.add(ptr)
    return t


def graph_to_tensors(data: HeteroData) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split a graph into named tensors and a JSON-ready layout.

    Returns:
        ``(tensors, layout)``: tensors maps ``graph/<key>``, ``node/<type>/<key>`` and
        ``edge/<src>__<rel>__<dst>/<key>`` to CPU tensors; layout lists the stores in order.

    Raises:
        GraphError: an attribute is neither a tensor nor a plain JSON value (names it).
    """
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    stores: list[dict[str, Any]] = []
    parts: list[tuple[str, Any, Any]] = [("graph", None, data._global_store)]
    parts += [("node", nt, data[nt]) for nt in data.node_types]
    parts += [("edge", et, data[et]) for et in data.edge_types]
    for kind, type_, store in parts:
        prefix = _store_name(kind, type_)
        attrs: list[list[Any]] = []
        for key, value in store.items():
            if torch.is_tensor(value):
                name = f"{prefix}/{key}"
                tensors[name] = _own(value, seen)
                attrs.append([key, "tensor", name])
            else:
                attrs.append([key, "value", _encode(value, f"{prefix}.{key}")])
        entry: dict[str, Any] = {"kind": kind, "attrs": attrs}
        if type_ is not None:
            entry["type"] = list(type_) if kind == "edge" else type_
        stores.append(entry)
    return tensors, {"format": GRAPH_FORMAT, "format_version": FORMAT_VERSION, "stores": stores}


def layout_to_json(layout: dict[str, Any]) -> str:
    """The layout as compact JSON (the header metadata of a graph file)."""
    return json.dumps(layout, separators=(",", ":"), allow_nan=True)


def _bad(source: str, msg: str) -> GraphError:
    return GraphError(f"{source} is not a valid region graph file: {msg}; rebuild it with "
                      f"'urbanrep build-graphs BUNDLE --out {source}'")


def parse_layout(text: str, source: str) -> dict[str, Any]:
    """Parse and shape-check a graph file's layout (JSON from its header), without touching tensors.

    Raises:
        GraphError: the JSON is malformed or does not describe stores of a region graph.
    """
    try:
        layout = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise _bad(source, f"its layout is not JSON ({exc})") from exc
    if not isinstance(layout, dict) or layout.get("format") != GRAPH_FORMAT:
        raise _bad(source, f"its layout does not say format {GRAPH_FORMAT!r}")
    if layout.get("format_version") != FORMAT_VERSION:
        raise _bad(source, f"format_version {layout.get('format_version')!r} is not {FORMAT_VERSION} "
                           "(written by another urbanrep version)")
    stores = layout.get("stores")
    if not isinstance(stores, list) or not stores or not isinstance(stores[0], dict) or \
            stores[0].get("kind") != "graph":
        raise _bad(source, "its layout has no graph store first")
    for i, store in enumerate(stores):
        if not isinstance(store, dict) or not isinstance(store.get("attrs"), list):
            raise _bad(source, f"store {i} of its layout has no attribute list")
        kind, type_ = store.get("kind"), store.get("type")
        ok_type = (kind == "graph" and i == 0) or (kind == "node" and isinstance(type_, str)) or (
            kind == "edge" and isinstance(type_, list) and len(type_) == 3
            and all(isinstance(t, str) for t in type_))
        if not ok_type:
            raise _bad(source, f"store {i} of its layout has kind {kind!r} and type {type_!r}")
        for attr in store["attrs"]:
            if not (isinstance(attr, list) and len(attr) == 3 and isinstance(attr[0], str)
                    and attr[1] in ("tensor", "value") and (attr[1] == "value" or isinstance(attr[2], str))):
                raise _bad(source, f"store {i} of its layout has a malformed attribute {str(attr)[:80]}")
    return layout


def tensor_names(layout: dict[str, Any]) -> list[str]:
    """Every tensor name a (parsed) layout refers to."""
    return [a[2] for s in layout["stores"] for a in s["attrs"] if a[1] == "tensor"]


def graph_from_tensors(tensors: dict[str, torch.Tensor], layout: dict[str, Any], source: str) -> HeteroData:
    """Rebuild the graph from :func:`graph_to_tensors` output (layout parsed by :func:`parse_layout`).

    Raises:
        GraphError: the layout and the tensors disagree (a tensor missing, unused or used twice).
    """
    names = tensor_names(layout)
    if len(set(names)) != len(names):
        raise _bad(source, "its layout uses one tensor for two attributes")
    missing, unused = set(names) - set(tensors), set(tensors) - set(names)
    if missing or unused:
        which = f"tensor {sorted(missing)[0]!r} is missing" if missing else f"tensor {sorted(unused)[0]!r} is unused"
        raise _bad(source, which)
    data = HeteroData()
    for store in layout["stores"]:
        if store["kind"] == "graph":
            target: Any = data._global_store
        elif store["kind"] == "node":
            target = data[store["type"]]
        else:
            target = data[tuple(store["type"])]
        for key, how, payload in store["attrs"]:
            # Stores are mappings: a key never reaches an attribute of the store object itself.
            target[key] = tensors[payload] if how == "tensor" else _decode(payload)
    return data
