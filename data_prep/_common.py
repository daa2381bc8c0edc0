"""Small helpers shared by the converters: numpy arrays to bundle tables."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from urbanrep.errors import BundleError


def load_npy(path: Path, shape: tuple[int | None, ...] | None = None) -> np.ndarray:
    """Load a .npy file (no pickles), checking its shape; errors name the file."""
    if not path.exists():
        raise BundleError(f"missing source file {path}; is the data root right (--data-root / URBANREP_DATA)?")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise BundleError(f"cannot read {path}: truncated or corrupt ({exc})") from exc
    if shape is not None and (arr.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, arr.shape, strict=True))):
        raise BundleError(f"{path}: expected shape {shape}, got {arr.shape}")
    return arr


def vector_table(region_ids: Sequence[Any], values: np.ndarray, prefix: str,
                 names: Sequence[str] | None = None) -> pd.DataFrame:
    """Per-region vector aggregate: ``region_id`` plus one column per feature."""
    values = np.asarray(values)
    if values.ndim == 1:
        values = values[:, None]
    width = len(str(values.shape[1] - 1))
    cols = list(names) if names is not None else [f"{prefix}_{i:0{width}d}" for i in range(values.shape[1])]
    df = pd.DataFrame(values, columns=cols)
    df.insert(0, "region_id", list(region_ids))
    return df


def matrix_table(region_ids: Sequence[Any], matrix: np.ndarray) -> pd.DataFrame:
    """Sparse long form of a ``[N, N]`` or ``[S, N, N]`` region x region matrix (non-zeros only)."""
    ids = np.asarray(list(region_ids))
    m = np.asarray(matrix)
    sliced = m.ndim == 3
    if not sliced:
        m = m[None]
    s, o, d = np.nonzero(m)
    df = pd.DataFrame({"origin_region": ids[o], "dest_region": ids[d], "value": m[s, o, d]})
    if sliced:
        df["slice"] = s.astype(np.int16)
    return df


def targets_long(region_ids: Sequence[Any], targets: dict[str, np.ndarray],
                 keep: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    """Long target table from per-target arrays aligned with ``region_ids``.

    ``keep`` optionally masks, per target, which regions have an observed value.
    """
    frames = []
    ids = np.asarray(list(region_ids))
    for name, arr in targets.items():
        vals = np.asarray(arr, dtype=np.float64).reshape(-1)
        if len(vals) != len(ids):
            raise BundleError(f"target {name!r}: {len(vals)} values for {len(ids)} regions")
        sel = keep[name] if keep is not None and name in keep else np.ones(len(ids), dtype=bool)
        frames.append(pd.DataFrame({"region_id": ids[sel], "target": name, "value": vals[sel]}))
    return pd.concat(frames, ignore_index=True)
