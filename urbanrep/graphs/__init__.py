"""City bundle → region graph: one builder per modality, the graph schema, build/save/load.

>>> from urbanrep.graphs import GraphConfig, build_graph, save_graph, load_graph
>>> data, report = build_graph(bundle, GraphConfig())
>>> save_graph(data, report, "graph.pt"); data = load_graph("graph.pt")
"""

from urbanrep.graphs.build import build_graph, input_hashes
from urbanrep.graphs.config import GraphConfig
from urbanrep.graphs.io import load_graph, read_graph_manifest, save_graph
from urbanrep.graphs.schema import (
    ADJACENT,
    EDGE_TYPES,
    GRAPH_SCHEMA_VERSION,
    IMAGE,
    IMAGE_FEATURE,
    IMAGE_IN_REGION,
    IMAGE_SPATIAL,
    MODALITY_EDGE,
    REGION,
    feature_key,
    graph_counts,
    mask_key,
    validate_graph,
)

__all__ = [
    "ADJACENT",
    "EDGE_TYPES",
    "GRAPH_SCHEMA_VERSION",
    "IMAGE",
    "IMAGE_FEATURE",
    "IMAGE_IN_REGION",
    "IMAGE_SPATIAL",
    "MODALITY_EDGE",
    "REGION",
    "GraphConfig",
    "build_graph",
    "feature_key",
    "graph_counts",
    "input_hashes",
    "load_graph",
    "mask_key",
    "read_graph_manifest",
    "save_graph",
    "validate_graph",
]
