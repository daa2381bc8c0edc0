"""The embedding a run writes: the transform applied to the embedding as trained.

After training, :meth:`urbanrep.network.RegionModel.final_embedding` puts the embedding through
target-free steps, each a pure function of the embedding, the region adjacency graph and (for
the volumes) the region's own input counts:

1. the neighbourhood scales (:func:`urbanrep.smoothing.neighbourhood_transform`: smoothing, hop
   means, each hop block cut to its leading principal components on a small city);
2. the positional columns (:func:`urbanrep.position.append_position`);
3. the region volumes, if given (:func:`urbanrep.volumes.region_volumes`, appended with
   :func:`urbanrep.position.append_scaled`), then the regions' count columns, if given
   (:func:`urbanrep.volumes.region_counts`, appended the same way);
4. the overall scale (:func:`scale_to_total_variance`).

The last step sets the written embedding's total variance (the sum of its column variances, the
mean squared distance of a row from the mean row) to a fixed value (``ModelConfig.output_variance``,
3 since round 2026-12-06v; 1 from round 2026-12-06s to it). As trained, that scale is an accident of
the training run (between about 40 and 60 on the development cities, depending on city and seed),
and a probe with a fixed penalty, such as the bare ``Ridge(alpha=1)`` the published region
embedding papers fit, regularises by it: on a few hundred regions and a few hundred columns it is
then nearly unpenalised least squares. At a fixed total variance ``T`` the same fixed penalty means the
same thing on every city and every width: it shrinks the directions that carry less than about
``1/(N T)`` of the variance by more than half. Anything that standardises columns, measures angles
or clusters (a scaler and ridge, cosine similarity, KMeans) is unaffected.

Shapes: ``emb`` ``[N, C]``; ``edge_index`` ``[2, E]`` (region graph node indices).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from urbanrep.position import append_position, append_scaled, column_variances
from urbanrep.smoothing import neighbourhood_transform

#: ``ModelConfig.output_norm`` values: the scale as trained, or unit total variance.
OUTPUT_NORMS = ("none", "unit_variance")


def scale_to_total_variance(emb: np.ndarray, total_variance: float = 1.0) -> np.ndarray:
    """``emb`` scaled so that its column variances sum to ``total_variance`` (unchanged if they sum to 0).

    Args:
        emb: ``[N, C]`` embedding.
        total_variance: The sum of column variances to scale to (``ModelConfig.output_variance``).

    Returns:
        ``[N, C]`` float32: ``emb * sqrt(total_variance / sum of column variances)``.
    """
    total = float(column_variances(emb).sum())
    if not np.isfinite(total) or total <= 0.0:
        return emb
    return (emb * np.float32(np.sqrt(total_variance / total))).astype(np.float32, copy=False)


def written_transform(emb: np.ndarray, edge_index: np.ndarray, share: float, scales: int,
                      regions_per_column: int, norm: str = "none", volumes: np.ndarray | None = None,
                      total_variance: float = 1.0, regions_per_component: int = 0,
                      counts: np.ndarray | None = None) -> np.ndarray:
    """The whole written-embedding transform: :func:`~urbanrep.smoothing.neighbourhood_transform`,
    then :func:`~urbanrep.position.append_position`, then the volumes, then the overall scale.

    What :meth:`urbanrep.network.RegionModel.final_embedding` applies after training
    (``ModelConfig.output_smoothing``, ``output_scales``, ``output_scale_regions``,
    ``output_position``, ``output_volumes`` and ``output_norm``); a pure function of the embedding as trained, the graph's adjacency and
    the volumes, so it can also be applied to a saved as-trained embedding.

    Args:
        emb: ``[N, C]`` embedding as trained, rows in graph node order.
        edge_index: ``[2, E]`` adjacency edges of the region graph.
        share: Smoothing share (0: none).
        scales: Hops of neighbour means to append (0: none).
        regions_per_column: One positional column per this many regions (0: none).
        norm: ``"none"`` (the scale as trained) or ``"unit_variance"`` (:func:`scale_to_total_variance`).
        volumes: Optional ``[N, V]`` centred columns to append, each scaled like one embedding column
            (:func:`urbanrep.volumes.region_volumes`; None or ``V == 0``: none).
        total_variance: The total variance ``"unit_variance"`` scales to (``ModelConfig.output_variance``).
        regions_per_component: Each hop block cut to one principal component per this many regions
            (``ModelConfig.output_scale_regions``; 0: full width).
        counts: Optional ``[N, K]`` centred count columns appended after the volumes, each scaled
            like one embedding column (:func:`urbanrep.volumes.region_counts`; None or ``K == 0``: none).

    Returns:
        ``[N, C + scales * scale_width(N, C, regions_per_component) + position_count(N,
        regions_per_column) + V + K]`` float32 (``emb`` itself when every step is off).
    """
    if norm not in OUTPUT_NORMS:
        raise ValueError(f"written_transform: norm must be one of {OUTPUT_NORMS}, got {norm!r}")
    out = append_position(neighbourhood_transform(emb, edge_index, share, scales, regions_per_component), edge_index,
                          regions_per_column)
    if volumes is not None:
        out = append_scaled(out, volumes)
    if counts is not None:
        out = append_scaled(out, counts)
    return scale_to_total_variance(out, total_variance) if norm == "unit_variance" else out


def written_from_config(emb: np.ndarray, edge_index: np.ndarray, config: Any,
                        volumes: np.ndarray | None = None, counts: np.ndarray | None = None) -> np.ndarray:
    """:func:`written_transform` with the settings of a model configuration.

    The one place that maps ``ModelConfig``'s written-embedding settings (``output_smoothing``,
    ``output_scales``, ``output_scale_regions``, ``output_position``, ``output_norm``,
    ``output_variance``) onto the
    transform, for the model (:meth:`urbanrep.network.RegionModel.final_embedding`) and for code
    that applies it to a saved as-trained embedding.

    Args:
        emb: ``[N, C]`` embedding as trained, rows in graph node order.
        edge_index: ``[2, E]`` adjacency edges of the region graph.
        config: A ``ModelConfig`` (read by attribute, so this module needs no import of it).
        volumes: ``[N, V]`` region volumes when ``config.output_volumes``, else None.
        counts: ``[N, K]`` region count columns when ``config.output_counts`` is not ``"none"``, else None.
    """
    return written_transform(emb, edge_index, config.output_smoothing, config.output_scales, config.output_position,
                             config.output_norm, volumes, config.output_variance, config.output_scale_regions, counts)


def written_layout(channels: int, share: float, scales: int, positions: int,
                   volumes: Sequence[str] = (), row: str = "the embedding as trained",
                   scale_channels: int | None = None, counts: Sequence[str] = ()) -> list[tuple[str, int]]:
    """What the columns of :func:`written_transform`'s output hold, block by block, in order.

    Args:
        channels: ``C``, the width of the embedding as trained (after the members' consensus).
        share: Smoothing share (0: the row as trained).
        scales: Hops of neighbour means appended.
        positions: Positional columns appended (:func:`urbanrep.position.position_count`).
        volumes: One name per volume column (:func:`urbanrep.volumes.volume_names`).
        row: What the region's own row is (e.g. the members' consensus).
        scale_channels: Width of each hop block (:func:`urbanrep.smoothing.scale_width`; None:
            ``channels``, the full width).
        counts: One name per count column (:func:`urbanrep.volumes.count_names`).

    Returns:
        ``(description, width)`` per block; the widths add up to the written width.
    """
    own = row if share == 0 else f"{row}, mixed with the neighbours' mean (share {share:g})"
    width = channels if scale_channels is None else scale_channels
    hop = "its {}-hop neighbour mean" + ("" if width == channels else f", its {width} leading principal components")
    blocks = [(own, channels)] + ([(hop.format(h), width) for h in range(1, scales + 1)] if width else [])
    if positions:
        blocks.append(("position: low-frequency Laplacian eigenvectors of the adjacency graph", positions))
    blocks += [(f"volume: {name}", 1) for name in volumes]
    blocks += [(f"count: {name}", 1) for name in counts]
    return blocks


#: ``DataFrame.attrs`` key (kept in the Parquet file's metadata) of what an embedding's columns hold
#: (:func:`layout_columns`; absent in embeddings written before it).
COLUMNS_ATTR = "urbanrep_columns"


def column_span(block: dict[str, str]) -> str:
    """``"emb_000 … emb_063"`` (or the one column) of a :func:`layout_columns` block."""
    return block["first"] if block["first"] == block["last"] else f"{block['first']} … {block['last']}"


def layout_columns(layout: Sequence[tuple[str, int]], prefix: str = "emb_") -> list[dict[str, str]]:
    """:func:`written_layout` as ``{"first", "last", "holds"}`` column ranges (``emb_000`` ...)."""
    out, start = [], 0
    for holds, width in layout:
        if width > 0:
            out.append({"first": f"{prefix}{start:03d}", "last": f"{prefix}{start + width - 1:03d}", "holds": holds})
        start += width
    return out


def grouped_columns(blocks: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """:func:`layout_columns` blocks with each run of one modality's count columns in one block.

    For a listing (``urbanrep info``): a model with count columns (``ModelConfig.output_counts``)
    writes one per feature, dozens on a city with hourly flows; the file's metadata keeps each name.
    """
    def run_of(block: dict[str, str]) -> tuple[str, str] | None:  # (modality, "sqrt scale") of a count column
        holds = block["holds"]
        return (holds.split(" ", 2)[1], holds.rsplit(",", 1)[-1].strip()) if holds.startswith("count: ") else None

    out: list[dict[str, str]] = []
    for run, group in itertools.groupby(blocks, run_of):
        members = list(group)
        if run is None or len(members) == 1:
            out += members
        else:
            out.append({"first": members[0]["first"], "last": members[-1]["last"],
                        "holds": f"count: {len(members)} {run[0]} count columns, {run[1]} (each named in the file)"})
    return out
