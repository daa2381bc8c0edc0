"""How much each region holds: per-modality count totals, for the written embedding.

The experts see each modality's counts on a log scale and the written embedding mixes every
region's row with its neighbours' (:mod:`urbanrep.smoothing`), so a region's own volume (how many
POIs, trips or land parcels it has) reaches a linear probe only blurred. With
``ModelConfig.output_volumes`` the written embedding carries it as it is: for every aggregated
modality of the model whose features include count columns (the ``log1p:`` columns the converters
write) and whose total varies between regions, the region's total count on a log and on a linear
scale (``ModelConfig.volume_scales``: any of a log, a square-root and a linear scale).

Shapes: ``[N, S * K]`` for ``K`` modalities with count columns and ``S`` scales; rows in graph node
order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from torch_geometric.data import HeteroData

from urbanrep.graphs.schema import AGGREGATED_MODALITIES, REGION, feature_key, mask_key

#: The scales a total can be written on (``ModelConfig.volume_scales``), each a function of the count.
VOLUME_SCALES: dict[str, Callable[[np.ndarray], np.ndarray]] = {"log": np.log1p, "sqrt": np.sqrt,
                                                                 "linear": lambda total: total}
#: The scales written by default (and by every model saved before ``volume_scales`` existed).
DEFAULT_VOLUME_SCALES = ("log", "linear")

#: Feature-name prefix of count columns stored as ``log1p(count)`` (see ``experts.base.signed_log1p``).
COUNT_PREFIX = "log1p:"


def count_columns(data: HeteroData, modality: str) -> list[int]:
    """Indices of ``modality``'s count columns in the graph's features (none without feature names)."""
    names = getattr(data, "feature_names", {}).get(modality, [])
    return [i for i, name in enumerate(names) if name.startswith(COUNT_PREFIX)]


def modality_counts(data: HeteroData, modality: str) -> tuple[np.ndarray, np.ndarray] | None:
    """``(counts [N, K], has [N] bool)``: ``modality``'s count columns turned back into counts (zero
    in a region without the modality's records: it has none) and which regions have the modality;
    None when it is not an aggregated modality of the graph with count columns."""
    cols = count_columns(data, modality) if modality in AGGREGATED_MODALITIES and modality in data.modalities else []
    if not cols:
        return None
    n = int(data[REGION].num_nodes)
    counts = np.expm1(data[REGION][feature_key(modality)].double().cpu().numpy()[:, cols]).clip(min=0.0)
    mask = getattr(data[REGION], mask_key(modality), None)
    has = np.ones(n, bool) if mask is None else mask.cpu().numpy().astype(bool)
    counts[~has] = 0.0
    return counts, has


def _totals(data: HeteroData, modality: str) -> tuple[np.ndarray, np.ndarray] | None:
    """``(total [N], has [N] bool)``: the sum of ``modality``'s count columns turned back into counts,
    and which regions have the modality; None when it has no count columns or the total is the same
    for every region that has it (shares that sum to one, say: nothing to tell apart)."""
    got = modality_counts(data, modality)
    if got is None:
        return None
    total, has = got[0].sum(axis=1), got[1]
    if not has.any() or np.ptp(total[has]) <= 1e-9 * max(1.0, float(np.abs(total[has]).max())):
        return None
    return total, has


def volume_modalities(data: HeteroData, modalities: Sequence[str]) -> list[str]:
    """The modalities of ``modalities`` whose count totals vary over the regions of ``data``, in order."""
    return [m for m in modalities if _totals(data, m) is not None]


def volume_scales_problem(scales: Sequence[str]) -> str | None:
    """What is wrong with ``scales`` (None when it names one or more distinct :data:`VOLUME_SCALES`)."""
    if isinstance(scales, str) or not scales or len(set(scales)) != len(scales) \
            or any(s not in VOLUME_SCALES for s in scales):
        return f"must be one or more distinct of {list(VOLUME_SCALES)}, got {scales!r}"
    return None


def volume_names(data: HeteroData, modalities: Sequence[str], scales: Sequence[str] = DEFAULT_VOLUME_SCALES
                 ) -> list[str]:
    """One name per column of :func:`region_volumes` (``"poi total, log scale"`` ...), in its order."""
    return [f"{m} total, {s} scale" for m in volume_modalities(data, modalities) for s in scales]


def region_volumes(data: HeteroData, modalities: Sequence[str],
                   scales: Sequence[str] = DEFAULT_VOLUME_SCALES) -> np.ndarray:
    """Each region's total count per modality, on each of ``scales``, centred.

    The total is the sum of the modality's count columns turned back into counts. Every column is
    centred over the regions that have the modality; a region without it (its mask is False) gets
    the mean, 0. Modalities without count columns, or whose total is the same in every region
    (e.g. land-use shares with a constant total), are skipped.

    Args:
        data: Region graph with ``feature_names``.
        modalities: Modalities to take (:func:`volume_modalities` of them are used).
        scales: Names from :data:`VOLUME_SCALES`, in the order wanted: ``"log"`` (``log1p(total)``),
            ``"sqrt"`` or ``"linear"`` (the total as it is).

    Returns:
        ``[N, len(scales) * len(volume_modalities(data, modalities))]`` float64: per modality, one
        column per scale.
    """
    problem = volume_scales_problem(scales)
    if problem:
        raise ValueError(f"region_volumes: scales {problem}")
    n = int(data[REGION].num_nodes)
    out = []
    for m in modalities:
        got = _totals(data, m)
        if got is None:
            continue
        total, has = got
        for col in (VOLUME_SCALES[name](total) for name in scales):
            c = np.zeros(n)
            c[has] = col[has] - col[has].mean()
            out.append(c)
    return np.stack(out, axis=1) if out else np.zeros((n, 0))


#: ``ModelConfig.output_counts`` values: no count columns, or every count column on one of :data:`VOLUME_SCALES`.
COUNT_OUTPUTS = ("none", *VOLUME_SCALES)


def _check_count_scale(scale: str) -> None:
    if scale not in VOLUME_SCALES:
        raise ValueError(f"region_counts: scale must be one of {list(VOLUME_SCALES)}, got {scale!r}")


def _count_modalities(data: HeteroData, modalities: Sequence[str], scale: str) -> list[tuple[str, list[int]]]:
    """``(modality, its count columns)`` for the modalities :func:`region_counts` takes, in order."""
    _check_count_scale(scale)
    found = [(m, count_columns(data, m) if m in AGGREGATED_MODALITIES and m in data.modalities else [])
             for m in modalities]
    return [(m, cols) for m, cols in found if cols]


def region_counts(data: HeteroData, modalities: Sequence[str], scale: str = "sqrt",
                  shares: Sequence[str] = ()) -> np.ndarray:
    """Every count column of ``modalities``' features (POIs per category, trips, road segments ...),
    as counts on ``scale``, centred over all regions; those of the modalities in ``shares`` as the
    square root of their shares of the region's total instead.

    Where :func:`region_volumes` gives a modality's total, this gives its parts. A region without
    the modality's records (its mask is False) counts zero, as its features already do: a region
    without a POI row has no POIs. Every count column is kept, a column that is the same in every
    region too (all zeros once centred, and zeros once scaled): the columns are the model's feature
    columns, so a model writes the same layout on every city it embeds. The square root
    (``"sqrt"``) is the variance-stabilising scale of Poisson counts. A modality in ``shares`` is
    written as its composition (the Hellinger transform: ``sqrt(count / total)`` per region), its
    size being the volumes' (:func:`region_volumes`); a region without its records, or with a zero
    total, is all zeros before centring.

    Args:
        data: Region graph with ``feature_names``.
        modalities: Modalities to take (the aggregated ones with count columns are used).
        scale: One of :data:`VOLUME_SCALES`.
        shares: Modalities of ``modalities`` written as shares of their region total.

    Returns:
        ``[N, K]`` float64, one column per count column, in :func:`count_names`' order.
    """
    _check_count_scale(scale)
    blocks = []
    for m in modalities:  # in count_names' order: the modalities with count columns
        got = modality_counts(data, m)
        if got is None:
            continue
        counts = got[0]
        if m in shares:
            total = counts.sum(axis=1, keepdims=True)
            x = np.sqrt(np.divide(counts, total, out=np.zeros_like(counts), where=total > 0))
        else:
            x = VOLUME_SCALES[scale](counts)
        blocks.append(x - x.mean(0))
    return np.hstack(blocks) if blocks else np.zeros((int(data[REGION].num_nodes), 0))


def count_names(data: HeteroData, modalities: Sequence[str], scale: str = "sqrt",
                shares: Sequence[str] = ()) -> list[str]:
    """One name per column of :func:`region_counts` (``"poi restaurant, sqrt scale"``, ``"mobility
    trips_out, sqrt share"`` ...), in its order (from the feature names alone)."""
    names = getattr(data, "feature_names", {})
    return [f"{m} {names[m][c][len(COUNT_PREFIX):]}, {'sqrt share' if m in shares else f'{scale} scale'}"
            for m, cols in _count_modalities(data, modalities, scale) for c in cols]


def counted_modalities(modalities: Sequence[str], config: Any) -> list[str]:
    """The modalities of ``modalities`` whose count columns a model configured by ``config`` (a
    ``ModelConfig``, read by attribute) writes: all but ``config.output_counts_skip``, in order."""
    return [m for m in modalities if m not in config.output_counts_skip]


def appended_columns(data: HeteroData, modalities: Sequence[str], config: Any
                     ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``(volumes, counts)``: the region columns a model configured by ``config`` (a ``ModelConfig``,
    read by attribute) appends to its written embedding, None for a step that is off
    (``output_volumes``, ``output_counts``); what :func:`urbanrep.written.written_from_config` takes."""
    volumes = region_volumes(data, modalities, config.volume_scales) if config.output_volumes else None
    counts = region_counts(data, counted_modalities(modalities, config), config.output_counts,
                           config.output_counts_shares) if config.output_counts != "none" else None
    return volumes, counts


def appended_names(data: HeteroData, modalities: Sequence[str], config: Any) -> tuple[list[str], list[str]]:
    """``(volume names, count names)``: one name per column of :func:`appended_columns`' blocks
    (empty for a step that is off), from the feature names alone."""
    volumes = volume_names(data, modalities, config.volume_scales) if config.output_volumes else []
    counts = count_names(data, counted_modalities(modalities, config), config.output_counts,
                         config.output_counts_shares) if config.output_counts != "none" else []
    return volumes, counts
