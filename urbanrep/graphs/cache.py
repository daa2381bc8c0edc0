"""Values that depend only on a graph, computed once per graph instead of on every forward pass.

Full-graph training runs the model on the same graph tensors every step; normalised edge
weights, sparse propagation operators, standardised input features and the modalities' noise
prior are functions of those tensors alone. :func:`graph_constant` computes such a value once
and hands it out again while the tensors it was computed from are the same objects, unchanged:

    op = graph_constant("gcn", (edge_index, edge_weight), lambda: build(edge_index, edge_weight), extra=n)

An entry is keyed by a name, ``extra`` (hashable settings) and the identity of its tensors; it
is valid while every one of them is alive and has the version counter it had (an in-place
change bumps it), and it is dropped when one of them is garbage-collected, so mini-batch
subgraphs and augmented views (new tensors every step) are computed afresh and do not pile up.
Tensors that require grad are never cached (the value is computed normally, with autograd).
Cached values are computed under ``torch.no_grad()``; they must not be modified by callers.
"""

from __future__ import annotations

import contextlib
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Any, TypeVar

import torch
from torch import Tensor

T = TypeVar("T")

#: Most entries kept (oldest dropped first); a full-graph model needs a few dozen.
MAX_ENTRIES = 256

_entries: OrderedDict[Hashable, tuple[tuple[Any, ...], tuple[int, ...], Any]] = OrderedDict()
_enabled = True


def _drop(key: Hashable) -> None:
    _entries.pop(key, None)


def graph_constant(name: str, tensors: tuple[Tensor | None, ...], build: Callable[[], T],
                   extra: Hashable = ()) -> T:
    """``build()``, computed once per set of graph tensors (see the module docstring).

    Args:
        name: What is computed (part of the key).
        tensors: The graph tensors the value depends on (None entries allowed).
        build: Computes the value from them.
        extra: Other hashable inputs of ``build`` (sizes, flags).

    Returns:
        The cached or freshly built value.
    """
    present = [t for t in tensors if t is not None]
    if not _enabled or any(t.requires_grad for t in present):
        return build()
    key = (name, extra, tuple(id(t) if t is not None else None for t in tensors))
    versions = tuple(t._version for t in present)
    hit = _entries.get(key)
    if hit is not None:
        refs, saved_versions, value = hit
        if all(r() is t for r, t in zip(refs, present, strict=True)) and saved_versions == versions:
            _entries.move_to_end(key)
            return value  # type: ignore[no-any-return]
    with torch.no_grad():
        value = build()
    _entries[key] = (tuple(weakref.ref(t) for t in present), versions, value)
    for t in present:
        weakref.finalize(t, _drop, key)
    while len(_entries) > MAX_ENTRIES:
        _entries.popitem(last=False)
    return value


def clear_graph_cache() -> None:
    """Forget every cached graph constant."""
    _entries.clear()


@contextlib.contextmanager
def graph_cache_disabled() -> Iterator[None]:
    """Compute every graph constant afresh inside the block (for checks and benchmarks)."""
    global _enabled
    prev, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = prev
