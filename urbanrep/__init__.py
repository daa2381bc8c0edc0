"""urbanrep: urban region embeddings from multimodal city data with graph neural networks.

The public API is imported lazily (``import urbanrep`` stays cheap for the CLI)::

    from urbanrep import Aggregate, CityBundle, RunConfig, UrbanRep

Layer types (``Aggregate``, ``ParquetLayer``) and the stage configs (``GraphConfig``,
``ModelConfig``, ``TrainConfig``, ``EvalConfig``) are importable from here too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from urbanrep.errors import UrbanRepError

__version__ = "0.1.0"
__all__ = ["Aggregate", "CityBundle", "EvalConfig", "GraphConfig", "ModelConfig", "ParquetLayer", "RunConfig",
           "TrainConfig", "UrbanRep", "UrbanRepError", "__version__", "load_dataset", "read_bundle", "validate_bundle",
           "write_bundle"]

_LAZY = {
    "Aggregate": "urbanrep.bundle",
    "ParquetLayer": "urbanrep.bundle.partitioned",
    "validate_bundle": "urbanrep.bundle",
    "EvalConfig": "urbanrep.evaluate.protocols",
    "GraphConfig": "urbanrep.graphs.config",
    "ModelConfig": "urbanrep.network",
    "TrainConfig": "urbanrep.train",
    "CityBundle": "urbanrep.bundle",
    "read_bundle": "urbanrep.bundle",
    "write_bundle": "urbanrep.bundle",
    "load_dataset": "urbanrep.datasets",
    "RunConfig": "urbanrep.runconfig",
    "UrbanRep": "urbanrep.model",
}

if TYPE_CHECKING:
    from urbanrep.bundle import Aggregate, CityBundle, read_bundle, validate_bundle, write_bundle
    from urbanrep.bundle.partitioned import ParquetLayer
    from urbanrep.datasets import load_dataset
    from urbanrep.evaluate.protocols import EvalConfig
    from urbanrep.graphs.config import GraphConfig
    from urbanrep.model import UrbanRep
    from urbanrep.network import ModelConfig
    from urbanrep.runconfig import RunConfig
    from urbanrep.train import TrainConfig


def __dir__() -> list[str]:
    return sorted(__all__)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'urbanrep' has no attribute {name!r}")
