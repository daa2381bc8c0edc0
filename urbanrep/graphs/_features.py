"""Feature helpers shared by the builders: source choice, aggregate alignment, count features."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from urbanrep.bundle import Aggregate
from urbanrep.errors import GraphError


def choose_source(setting: str, has_raw: bool, aggregates: list[Aggregate], modality: str, layer: str) -> str:
    """``"raw"`` or ``"aggregate"`` for a modality, following ``GraphConfig.<modality>_source``."""
    has_agg = bool(aggregates)
    if setting == "raw" and not has_raw:
        raise GraphError(f"{modality}_source='raw' but the bundle has no raw {layer!r} layer; "
                         f"use {modality}_source='auto' or add the layer")
    if setting == "aggregate" and not has_agg:
        raise GraphError(f"{modality}_source='aggregate' but the bundle has no {modality} aggregate; "
                         f"use {modality}_source='auto' or add one")
    if setting == "auto":
        return "aggregate" if has_agg else "raw"
    return setting


def vector_aggregates(aggregates: list[Aggregate], region_ids: pd.Index) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Vector aggregates aligned to ``region_ids`` and concatenated column-wise.

    Returns:
        ``(values [N, F] float64, has_row [N] bool, names [F])``; ``has_row`` is True where
        the region has a row in at least one of the aggregates (missing parts are zero).
    """
    n = len(region_ids)
    if not aggregates:
        return np.zeros((n, 0)), np.zeros(n, dtype=bool), []
    blocks, names = [], []
    has_row = np.zeros(n, dtype=bool)
    for agg in aggregates:
        values, mask = agg.dense(region_ids)
        blocks.append(values)
        names += [f"{agg.name}:{c}" for c in agg.value_columns()]
        has_row |= mask
    return np.hstack(blocks), has_row, names


def check_counts(values: np.ndarray, where: str) -> None:
    """Raise when count-like data has negative entries."""
    if values.size and values.min() < 0:
        rows = np.flatnonzero((values < 0).any(axis=1))
        raise GraphError(f"{where} has negative values in rows {rows[:10].tolist()}: it must hold counts, "
                         "areas or shares (>= 0); fix the aggregate or drop it from the bundle")


def count_features(counts: np.ndarray, names: list[str], total_name: str = "total") -> tuple[np.ndarray, list[str]]:
    """Features of per-region counts: ``log1p(counts)``, shares of the row total, ``log1p(total)``.

    Args:
        counts: ``[N, C]`` non-negative counts (or areas).
        names: ``C`` category names.

    Returns:
        float32 ``[N, 2C + 1]`` and its column names; rows with a zero total are all zero.
    """
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)
    x = np.hstack([np.log1p(counts), shares, np.log1p(total)]).astype(np.float32)
    cols = [f"log1p:{c}" for c in names] + [f"share:{c}" for c in names] + [f"log1p:{total_name}"]
    return x, cols


def category_codes(values: pd.Series, where: str, categories: Sequence[str] | None = None
                   ) -> tuple[np.ndarray, list[str]]:
    """Integer codes of a category column (-1 for missing).

    Values are compared as strings (``1`` and ``"1"`` are one category). One hash pass over
    the rows (``pandas.factorize``); only the distinct values are turned into strings.

    Args:
        values: ``[P]`` category values.
        where: Layer and column, for error messages.
        categories: Fixed class list (the bundle's ``categories``): the names are this list,
            in this order, present in the data or not. ``None``: the sorted distinct values.

    Returns:
        ``(codes [P] int64, names [C])``.

    Raises:
        GraphError: if every value is missing (without a fixed list), or a value is outside
            the fixed list.
    """
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    as_str = np.array([str(v) for v in np.asarray(uniques, dtype=object)], dtype=object)
    codes = np.asarray(codes, dtype=np.int64)
    if categories is not None:
        lookup = {str(c): i for i, c in enumerate(categories)}
        remap = np.array([lookup.get(v, -1) for v in as_str] + [-1], dtype=np.int64)
        outside = sorted(v for v in as_str if v not in lookup)
        if outside:
            raise GraphError(f"{where}: classes {outside[:10]} are not in the bundle's fixed category list; "
                             "map them to listed classes (urbanrep.vocabulary) or drop the bundle's 'categories'")
        return remap[np.where(codes >= 0, codes, len(as_str))], [str(c) for c in categories]
    if not len(as_str):
        raise GraphError(f"{where}: every value is missing; the layer needs category values")
    names, remap = np.unique(as_str.astype(str), return_inverse=True)
    codes = np.where(codes >= 0, remap.reshape(-1)[np.maximum(codes, 0)], -1).astype(np.int64)
    return codes, [str(c) for c in names]


def masked_report(mask: np.ndarray, region_ids: np.ndarray) -> dict[str, Any]:
    """Count and first ids of the regions masked out (no data)."""
    from urbanrep.graphs._spatial import listed

    miss = np.flatnonzero(~mask)
    return {"masked_regions": int(len(miss)), "masked_region_ids": listed(np.asarray(region_ids)[miss])}
