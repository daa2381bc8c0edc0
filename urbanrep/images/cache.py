"""Parquet cache of image features, keyed by (absolute path, file size, mtime, model id).

Layout: ``<cache_dir>/<model slug>/part-<time>-<pid>-<rand>.parquet``; every part has the columns

==========  ==================================  =============================================
path        string                              absolute image path (``os.path.abspath``)
size        int64                               file size in bytes when it was encoded
mtime_ns    int64                               file modification time (ns) when it was encoded
model_id    string                              :attr:`ImageEncoder.model_id`
feature     fixed_size_list<float32>[D]         L2-normalised image embedding
==========  ==================================  =============================================

Each write adds one part, written atomically, so a crash mid-run keeps what was flushed and a
concurrent reader never sees half a file. When one path has several rows the newest part wins;
an entry only hits when size and mtime still match the file, so a changed file is re-encoded.
Parts are merged into one when there are more than :data:`MAX_PARTS`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from urbanrep.atomic import atomic_path

log = logging.getLogger(__name__)

MAX_PARTS = 16
KEY_COLUMNS: tuple[str, ...] = ("path", "size", "mtime_ns")


def cache_slug(model_id: str) -> str:
    """Folder name of a model's cache: a readable prefix plus a hash of the full id."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id.split("|", 1)[0])[:48]
    return f"{readable}-{hashlib.sha1(model_id.encode()).hexdigest()[:12]}"


class FeatureCache:
    """The feature cache of one model under ``root``.

    Args:
        root: Cache folder (``ImageConfig.cache_dir``); created on first write.
        model_id: Identity of the model and its weights; entries of other models never hit.
    """

    def __init__(self, root: str | os.PathLike[str], model_id: str) -> None:
        self.root = Path(root).expanduser()
        self.model_id = model_id
        self.folder = self.root / cache_slug(model_id)

    def parts(self) -> list[Path]:
        """Part files, oldest first."""
        if not self.folder.is_dir():
            return []
        return sorted(self.folder.glob("part-*.parquet"))

    def read(self) -> tuple[pd.DataFrame, np.ndarray, list[Path]]:
        """All valid entries, newest per path.

        Returns:
            ``(keys, features, parts)``: keys is a DataFrame with columns ``path, size, mtime_ns``
            (one row per path), features float32 ``[len(keys), D]`` (``[0, 0]`` when empty),
            parts the files that were read. Unreadable parts are skipped with a warning.
        """
        tables: list[pa.Table] = []
        read_parts: list[Path] = []
        dim: int | None = None
        for part in self.parts():
            try:
                table = pq.read_table(part, columns=[*KEY_COLUMNS, "model_id", "feature"])
            except (OSError, pa.ArrowException) as exc:
                log.warning("image feature cache part %s is unreadable (%s); ignoring it (delete the file "
                            "to silence this)", part, exc)
                continue
            ftype = table.schema.field("feature").type
            if not pa.types.is_fixed_size_list(ftype) or (dim is not None and ftype.list_size != dim):
                log.warning("image feature cache part %s has feature type %s, expected fixed_size_list of "
                            "float32[%s]; ignoring it (delete the file)", part, ftype, dim or "D")
                continue
            dim = ftype.list_size
            table = table.filter(pc.equal(table.column("model_id").cast(pa.string()), self.model_id))
            tables.append(table.select([*KEY_COLUMNS, "feature"]))
            read_parts.append(part)
        if not tables:
            return pd.DataFrame({"path": [], "size": [], "mtime_ns": []}), np.zeros((0, 0), np.float32), read_parts
        table = pa.concat_tables(tables)
        keys = pd.DataFrame({c: table.column(c).to_numpy() for c in KEY_COLUMNS})
        feats = _features_to_numpy(table.column("feature"), dim or 0)
        keep = ~keys.duplicated("path", keep="last").to_numpy()
        return keys.loc[keep].reset_index(drop=True), feats[keep], read_parts

    def lookup(self, paths: np.ndarray, sizes: np.ndarray, mtimes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cached features of files whose size and mtime still match.

        Args:
            paths: Absolute paths ``[K]``.
            sizes: File sizes ``[K]`` (int64).
            mtimes: Modification times in ns ``[K]`` (int64).

        Returns:
            ``(hit, features)``: hit bool ``[K]``; features float32 ``[hit.sum(), D]`` in the
            order of the hits.
        """
        keys, feats, _ = self.read()
        if len(keys) == 0 or len(paths) == 0:
            return np.zeros(len(paths), dtype=bool), np.zeros((0, feats.shape[1]), np.float32)
        keys = keys.assign(row=np.arange(len(keys)))
        request = pd.DataFrame({"path": np.asarray(paths, dtype=object),
                                "size": np.asarray(sizes, dtype=np.int64),
                                "mtime_ns": np.asarray(mtimes, dtype=np.int64)})
        merged = request.merge(keys, on=list(KEY_COLUMNS), how="left", sort=False)
        rows = merged["row"].to_numpy()
        hit = ~np.isnan(rows)
        return hit, feats[rows[hit].astype(np.int64)]

    def add(self, paths: np.ndarray, sizes: np.ndarray, mtimes: np.ndarray, features: np.ndarray) -> Path | None:
        """Write new entries as one part (atomically); merge parts when there are too many.

        Args:
            paths: Absolute paths ``[K]``.
            sizes: File sizes ``[K]`` at encoding time.
            mtimes: Modification times (ns) ``[K]`` at encoding time.
            features: float32 ``[K, D]``.

        Returns:
            The part written, or ``None`` when there was nothing to write.
        """
        if len(paths) == 0:
            return None
        table = _to_table(paths, sizes, mtimes, features, self.model_id)
        part = self.folder / f"part-{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.parquet"
        _write_table(table, part)
        log.debug("wrote %d image features to %s", len(paths), part)
        if len(self.parts()) > MAX_PARTS:
            self.compact()
        return part

    def compact(self) -> None:
        """Merge all parts into one (newest entry per path), then delete the merged parts."""
        keys, feats, parts = self.read()
        if len(parts) <= 1:
            return
        merged = parts[-1].with_name(parts[-1].stem + "-merged.parquet")
        _write_table(_to_table(keys["path"].to_numpy(), keys["size"].to_numpy(), keys["mtime_ns"].to_numpy(),
                               feats, self.model_id), merged)
        for part in parts:
            if part != merged:
                part.unlink(missing_ok=True)
        log.info("merged %d image feature cache parts into %s (%d entries)", len(parts), merged, len(keys))


def _features_to_numpy(column: pa.ChunkedArray, dim: int) -> np.ndarray:
    """A fixed-size-list column as float32 ``[n, dim]``."""
    flat = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(flat.astype(np.float32, copy=False).reshape(-1, dim))


def _to_table(paths: np.ndarray, sizes: np.ndarray, mtimes: np.ndarray, features: np.ndarray,
              model_id: str) -> pa.Table:
    features = np.ascontiguousarray(features, dtype=np.float32)
    n, dim = features.shape
    return pa.table({
        "path": pa.array(np.asarray(paths, dtype=object), type=pa.string()),
        "size": pa.array(np.asarray(sizes, dtype=np.int64)),
        "mtime_ns": pa.array(np.asarray(mtimes, dtype=np.int64)),
        "model_id": pa.DictionaryArray.from_arrays(np.zeros(n, dtype=np.int32), pa.array([model_id])),
        "feature": pa.FixedSizeListArray.from_arrays(pa.array(features.reshape(-1)), dim),
    })


def _write_table(table: pa.Table, target: Path) -> None:
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp)
