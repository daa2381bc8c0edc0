"""Per-image features of an image layer: the ``feature`` column, or open_clip on ``image_path``.

This is the one ETL step that reads files (the images), so it is kept apart from the pure
builders. open_clip is imported only when a layer has no ``feature`` column.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from urbanrep.errors import GraphError
from urbanrep.graphs._spatial import MAX_LISTED, feature_matrix
from urbanrep.images import ImageConfig

log = logging.getLogger(__name__)


def resolve_image_paths(paths: pd.Series, root: Path | None, layer: str) -> list[Path]:
    """Image paths made absolute against the bundle folder (``root``)."""
    raw = paths.astype("string")
    missing = np.flatnonzero(raw.isna().to_numpy())
    if len(missing):
        raise GraphError(f"layer {layer!r}: image_path is missing at rows {missing[:MAX_LISTED].tolist()}; "
                         "give a path or a 'feature' vector for every row")
    out = [Path(p) for p in raw.tolist()]
    relative = [i for i, p in enumerate(out) if not p.is_absolute()]
    if relative:
        if root is None:
            raise GraphError(
                f"layer {layer!r} has relative image paths (row {relative[0]}: {out[relative[0]]}) but the bundle "
                "was not read from a folder; use absolute paths or read the bundle with read_bundle()"
            )
        out = [root / p if not p.is_absolute() else p for p in out]
    return out


def layer_features(layer: pd.DataFrame, root: Path | None, config: ImageConfig, name: str
                   ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Features of every row of an image layer.

    Args:
        layer: ``remote_sensing`` or ``street_view`` table with ``feature`` and/or ``image_path``.
        root: Bundle folder (relative image paths resolve against it).
        config: Encoder settings (used only without a ``feature`` column).
        name: Layer name (for messages).

    Returns:
        ``(features [M, D] float32, ok [M] bool, report)``; rows that could not be read are zero
        with ``ok`` False and are listed in the report.
    """
    if "feature" in layer.columns:
        feats, ok = feature_matrix(layer["feature"], f"layer {name!r}")
        return feats, ok, {"features_from": "feature column", "missing_features": int((~ok).sum())}
    if "image_path" not in layer.columns:
        raise GraphError(f"layer {name!r} needs an 'image_path' or a 'feature' column")
    from urbanrep.images import encode_images

    paths = resolve_image_paths(layer["image_path"], root, name)
    log.info("encoding %d images of layer %s with %s", len(paths), name, config.model_name)
    enc = encode_images(paths, config)
    feats = np.asarray(enc.features, dtype=np.float32)
    ok = np.asarray(enc.ok, dtype=bool)
    if feats.shape[0] != len(paths) or ok.shape != (len(paths),):
        raise GraphError(f"layer {name!r}: the image encoder returned {feats.shape[0]} rows for {len(paths)} images")
    feats = np.where(ok[:, None], feats, 0).astype(np.float32)
    report = {"features_from": f"open_clip {config.model_name}", "images": len(paths),
              "unreadable_images": int((~ok).sum()),
              "failures": [list(f) for f in enc.failures[:MAX_LISTED]]}
    return feats, ok, report
