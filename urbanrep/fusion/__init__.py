"""Spatially-aware fusion of modality embeddings and the contrastive / reconstruction losses."""

from urbanrep.fusion.losses import (
    LossConfig,
    augment_graph,
    info_nce,
    mobility_reconstruction_loss,
    near_pairs,
    similarity_reconstruction_loss,
)
from urbanrep.fusion.spatial import FusionConfig, SpatialFusion, positional_encoding

__all__ = [
    "FusionConfig",
    "LossConfig",
    "SpatialFusion",
    "augment_graph",
    "info_nce",
    "mobility_reconstruction_loss",
    "near_pairs",
    "positional_encoding",
    "similarity_reconstruction_loss",
]
