"""urbanrep: urban region embeddings from multimodal city data with graph neural networks.

The public API is imported lazily (``import urbanrep`` stays cheap for the CLI)::

    from urbanrep import CityBundle, RunConfig, UrbanRep
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from urbanrep.errors import UrbanRepError

__version__ = "0.1.0"
__all__ = ["CityBundle", "RunConfig", "UrbanRep", "UrbanRepError", "__version__", "load_dataset", "read_bundle",
           "write_bundle"]

_LAZY = {
    "CityBundle": "urbanrep.bundle",
    "read_bundle": "urbanrep.bundle",
    "write_bundle": "urbanrep.bundle",
    "load_dataset": "urbanrep.datasets",
    "RunConfig": "urbanrep.runconfig",
    "UrbanRep": "urbanrep.model",
}

if TYPE_CHECKING:
    from urbanrep.bundle import CityBundle, read_bundle, write_bundle
    from urbanrep.datasets import load_dataset
    from urbanrep.model import UrbanRep
    from urbanrep.runconfig import RunConfig


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'urbanrep' has no attribute {name!r}")
