"""Small helpers shared by the converters: numpy arrays to bundle tables."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from urbanrep.bundle.core import matrix_frame
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
    return matrix_frame(region_ids, matrix)


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


def read_vector(path: str | Path, **kwargs: Any) -> Any:
    """Read a vector file (GeoPackage, shapefile, ``zip://`` path) with geopandas; errors name the file.

    Returns:
        A GeoDataFrame.
    """
    import geopandas as gpd

    local = Path(str(path).removeprefix("zip://").split("!")[0])
    if not local.exists():
        raise BundleError(f"missing source file {local}; is the data root right (--data-root / URBANREP_DATA)?")
    try:
        return gpd.read_file(path, **kwargs)
    except Exception as exc:
        raise BundleError(f"cannot read {path}: {exc}") from exc


def read_table(path: Path, columns: Sequence[str] = (), **kwargs: Any) -> pd.DataFrame:
    """Read a CSV file and check that ``columns`` are present; errors name the file."""
    if not path.exists():
        raise BundleError(f"missing source file {path}; is the data root right (--data-root / URBANREP_DATA)?")
    try:
        df = pd.read_csv(path, **kwargs)
    except Exception as exc:
        raise BundleError(f"cannot read {path}: {exc}") from exc
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise BundleError(f"{path}: missing columns {missing} (has: {', '.join(map(str, df.columns))})")
    return df


def require_columns(df: pd.DataFrame, columns: Sequence[str], where: str) -> None:
    """Raise a :class:`BundleError` naming ``where`` if ``df`` lacks any of ``columns``."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise BundleError(f"{where}: missing columns {missing} (has: {', '.join(map(str, df.columns))})")


def restrict_to_regions(df: pd.DataFrame, id_column: str, region_ids: Sequence[Any], where: str,
                        ) -> tuple[pd.DataFrame, dict[str, int]]:
    """Keep the rows of ``df`` whose ``id_column`` is a region id; count the join.

    Returns:
        ``(rows, counts)`` where counts holds ``rows`` (in the source), ``matched``,
        ``unknown_ids_dropped`` (source rows naming no region) and ``regions_without_row``.

    Raises:
        BundleError: if an id appears twice in the source.
    """
    ids = pd.Index(list(region_ids))
    dup = df[id_column][df[id_column].duplicated()]
    if len(dup):
        raise BundleError(f"{where}: id {dup.iloc[0]!r} appears {int((df[id_column] == dup.iloc[0]).sum())} "
                          f"times ({len(dup)} duplicate rows); each region needs one row")
    known = df[id_column].isin(ids).to_numpy()
    counts = {"rows": len(df), "matched": int(known.sum()), "unknown_ids_dropped": int((~known).sum()),
              "regions_without_row": int((~ids.isin(df[id_column])).sum())}
    return df.loc[known], counts


def long_targets(df: pd.DataFrame, id_column: str, columns: dict[str, str]) -> tuple[pd.DataFrame, dict[str, int]]:
    """Long target table from a wide table; rows with a missing (NaN) value are left out.

    Args:
        df: One row per region.
        id_column: Column holding the region id.
        columns: Target name -> source column.

    Returns:
        ``(targets, left_out)``: the long ``region_id, target, value`` table and, per target,
        how many rows were left out for a missing value.
    """
    frames, left_out = [], {}
    for name, col in columns.items():
        vals = pd.to_numeric(df[col], errors="coerce").astype(np.float64)
        ok = np.isfinite(vals.to_numpy())
        left_out[name] = int((~ok).sum())
        frames.append(pd.DataFrame({"region_id": df[id_column].to_numpy()[ok], "target": name,
                                    "value": vals.to_numpy()[ok]}))
    return pd.concat(frames, ignore_index=True), left_out
