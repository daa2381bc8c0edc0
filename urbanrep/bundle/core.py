"""In-memory city bundle: the regions of a city and any of its modality layers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd

from urbanrep.bundle.partitioned import ParquetLayer
from urbanrep.bundle.spec import AGGREGATE_KINDS, MODALITIES, RAW_LAYERS
from urbanrep.errors import BundleError


def matrix_frame(region_ids: Any, matrix: Any) -> pd.DataFrame:
    """Sparse long form (``origin_region, dest_region, value[, slice]``, non-zeros only) of a dense
    ``[N, N]`` or ``[S, N, N]`` region x region matrix whose rows and columns follow ``region_ids``."""
    ids = np.asarray(list(region_ids))
    m = np.asarray(matrix)
    sliced = m.ndim == 3
    s, o, d = np.nonzero(m if sliced else m[None])
    values = m[s, o, d] if sliced else m[o, d]
    table = pd.DataFrame({"origin_region": ids[o], "dest_region": ids[d], "value": values})
    if sliced:
        table["slice"] = s.astype(np.int16)
    return table


@dataclass
class Aggregate:
    """Per-region data published only in aggregated form.

    Attributes:
        name: File stem under ``aggregates/`` (e.g. ``"poi_counts"``).
        modality: One of :data:`urbanrep.bundle.spec.MODALITIES`.
        kind: ``"vector"``: ``table`` has ``region_id`` plus numeric columns (one row per
            region, regions without a row count as missing for this modality).
            ``"matrix"``: ``table`` is a sparse region x region matrix in long form with
            ``origin_region``, ``dest_region``, ``value`` and an optional integer ``slice``
            (e.g. time of day); absent pairs are zero.
        table: The data.
        description: Free text, kept in the manifest.
    """

    name: str
    modality: str
    kind: str
    table: pd.DataFrame
    description: str = ""

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise BundleError(
                f"aggregate {self.name!r}: unknown modality {self.modality!r}; "
                f"valid modalities: {', '.join(MODALITIES)}"
            )
        if self.kind not in AGGREGATE_KINDS:
            raise BundleError(
                f"aggregate {self.name!r}: unknown kind {self.kind!r}; valid kinds: {', '.join(AGGREGATE_KINDS)}"
            )

    @classmethod
    def from_vectors(cls, name: str, modality: str, region_ids: Any, values: Any,
                     columns: list[str] | None = None, description: str = "") -> Aggregate:
        """A vector aggregate from a per-region array.

        Args:
            name: File stem under ``aggregates/`` (e.g. ``"poi_counts"``).
            modality: One of :data:`urbanrep.bundle.spec.MODALITIES`.
            region_ids: ``[N]`` region ids, row order of ``values``.
            values: ``[N]`` or ``[N, F]`` numbers (one row per region).
            columns: ``F`` column names (default ``<name>_0``, ``<name>_1``...).
            description: Free text for the manifest.
        """
        arr = np.asarray(values)
        arr = arr[:, None] if arr.ndim == 1 else arr
        ids = list(region_ids)
        if arr.ndim != 2 or arr.shape[0] != len(ids):
            raise BundleError(f"aggregate {name!r}: values of shape {arr.shape} do not have one row per region "
                              f"({len(ids)} region ids); pass an [N] or [N, F] array in region_ids order")
        cols = list(columns) if columns is not None else [f"{name}_{i}" for i in range(arr.shape[1])]
        if len(cols) != arr.shape[1]:
            raise BundleError(f"aggregate {name!r}: {len(cols)} column names for {arr.shape[1]} value columns")
        table = pd.DataFrame(arr, columns=cols)
        table.insert(0, "region_id", ids)
        return cls(name, modality, "vector", table, description)

    @classmethod
    def from_matrix(cls, name: str, modality: str, region_ids: Any, matrix: Any,
                    description: str = "") -> Aggregate:
        """A matrix aggregate (e.g. OD trips) from a dense ``[N, N]`` or ``[S, N, N]`` array.

        Args:
            name: File stem under ``aggregates/`` (e.g. ``"od_trips"``).
            modality: One of :data:`urbanrep.bundle.spec.MODALITIES` (``"mobility"`` for OD flows).
            region_ids: ``[N]`` region ids: row ``i`` / column ``j`` of the matrix is region ``i`` / ``j``.
            matrix: ``[N, N]`` (origin x destination) or ``[S, N, N]`` (``S`` slices, e.g. time of day).
            description: Free text for the manifest.

        Only the non-zero pairs are stored (absent pairs are zero).
        """
        m = np.asarray(matrix)
        ids = np.asarray(list(region_ids))
        sliced = m.ndim == 3
        m = m if sliced else m[None]
        if m.ndim != 3 or m.shape[1:] != (len(ids), len(ids)):
            raise BundleError(f"aggregate {name!r}: matrix of shape {np.asarray(matrix).shape} is not [N, N] or "
                              f"[S, N, N] with N = {len(ids)} region ids")
        return cls(name, modality, "matrix", matrix_frame(ids, m if sliced else m[0]), description)

    def __repr__(self) -> str:
        return (f"Aggregate({self.name!r}, modality={self.modality!r}, kind={self.kind!r}, "
                f"table={self.table.shape[0]}x{self.table.shape[1]})")

    def value_columns(self) -> list[str]:
        """Numeric value columns of a vector aggregate (everything but ``region_id``)."""
        return [c for c in self.table.columns if c != "region_id"]

    def dense(self, region_ids: pd.Index) -> tuple[np.ndarray, np.ndarray]:
        """Return the aggregate as a dense array aligned to ``region_ids``.

        Returns:
            ``(values, mask)``. For vectors ``values`` is ``[N, F]`` float64 and ``mask`` is
            ``[N]`` bool (True where the region has a row). For matrices ``values`` is
            ``[S, N, N]`` (``S`` slices, 1 without a ``slice`` column) and ``mask`` marks
            regions with any non-zero in- or out-flow.
        """
        n = len(region_ids)
        pos = pd.Series(np.arange(n), index=region_ids)
        if self.kind == "vector":
            idx = pos.reindex(self.table["region_id"]).to_numpy()
            values = np.zeros((n, len(self.value_columns())), dtype=np.float64)
            mask = np.zeros(n, dtype=bool)
            ok = ~np.isnan(idx)
            rows = idx[ok].astype(np.int64)
            values[rows] = self.table.loc[ok, self.value_columns()].to_numpy(dtype=np.float64)
            mask[rows] = True
            return values, mask
        o = pos.reindex(self.table["origin_region"]).to_numpy()
        d = pos.reindex(self.table["dest_region"]).to_numpy()
        s = self.table["slice"].to_numpy(dtype=np.int64) if "slice" in self.table else np.zeros(len(o), np.int64)
        ok = ~(np.isnan(o) | np.isnan(d))
        num_slices = int(s.max()) + 1 if len(s) else 1
        values = np.zeros((num_slices, n, n), dtype=np.float64)
        np.add.at(values, (s[ok], o[ok].astype(np.int64), d[ok].astype(np.int64)),
                  self.table["value"].to_numpy(dtype=np.float64)[ok])
        total = values.sum(axis=0)
        mask = (total.sum(axis=0) + total.sum(axis=1)) > 0
        return values, mask


@dataclass
class CityBundle:
    """A city's regions plus any of its modality layers, targets and labels.

    All GeoDataFrames share the CRS of ``regions`` once validated
    (see :func:`urbanrep.bundle.validate.validate_bundle`).

    Attributes:
        name: Short dataset name (``"nyc_manhattan180"``).
        regions: GeoDataFrame with a unique ``region_id`` column and polygon geometry (a
            GeoDataFrame indexed by ``region_id``, as srai makes them, is taken as well).
        pois / trips / landuse / roads / remote_sensing / street_view: optional raw layers
            (see :mod:`urbanrep.bundle.spec` for their columns). ``pois`` and ``trips`` may be
            a :class:`~urbanrep.bundle.partitioned.ParquetLayer` kept on disk (larger than memory).
        aggregates: Aggregated-level data by name.
        targets: Long table ``region_id, target, value`` of downstream targets.
        labels: Long table ``region_id, label, value`` of categorical labels (clustering).
        target_groups: Names of multi-column targets (e.g. land-use shares) mapped to the
            target names that make them up, in order.
        provenance: Sources, licences and notes, kept in the manifest.
        categories: Fixed class lists of raw layers (``"pois"``, ``"landuse"``, ``"roads"``), e.g.
            from a shipped vocabulary (:mod:`urbanrep.vocabulary`): the graph then has one feature
            column per listed class, in this order, whether or not the city has it, so that
            cities prepared with the same lists get the same feature columns. Values of the
            layer outside its list are an error. Empty: the classes present in the data.
        root: Folder the bundle was read from (image paths are relative to it), if any.
    """

    name: str
    regions: gpd.GeoDataFrame
    pois: gpd.GeoDataFrame | ParquetLayer | None = None
    trips: gpd.GeoDataFrame | pd.DataFrame | ParquetLayer | None = None
    landuse: gpd.GeoDataFrame | None = None
    roads: gpd.GeoDataFrame | None = None
    remote_sensing: gpd.GeoDataFrame | None = None
    street_view: gpd.GeoDataFrame | None = None
    aggregates: dict[str, Aggregate] = field(default_factory=dict)
    targets: pd.DataFrame | None = None
    labels: pd.DataFrame | None = None
    target_groups: dict[str, list[str]] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    categories: dict[str, list[str]] = field(default_factory=dict)
    root: Path | None = None
    _validated: tuple[int, ...] | None = field(default=None, init=False, repr=False, compare=False)

    def _fingerprint(self) -> tuple[int, ...]:
        tables = [self.regions, *(getattr(self, lay) for lay in RAW_LAYERS), self.targets, self.labels, self.categories]
        tables += [a.table for a in self.aggregates.values()]
        return tuple(id(t) for t in tables) + (len(self.aggregates),)

    def mark_validated(self) -> None:
        """Record that :func:`~urbanrep.bundle.validate.validate_bundle` produced this bundle as it is."""
        self._validated = self._fingerprint()

    def is_validated(self) -> bool:
        """True when no layer was replaced since :meth:`mark_validated` (see ``ensure_validated``)."""
        return self._validated is not None and self._validated == self._fingerprint()

    def __post_init__(self) -> None:
        # srai's regionalizers index their regions by region_id: take that form as well.
        if (isinstance(self.regions, pd.DataFrame) and "region_id" not in self.regions.columns
                and self.regions.index.name == "region_id"):
            self.regions = self.regions.reset_index()

    def __repr__(self) -> str:
        """The one-line summary (``print(bundle)``), never whole frames."""
        return f"CityBundle({self.summary_line()})"

    @property
    def crs(self) -> Any:
        """CRS of the regions layer (and of every layer after validation)."""
        return self.regions.crs

    @property
    def region_ids(self) -> pd.Index:
        """Region ids in bundle order: the row order of every embedding urbanrep writes."""
        return pd.Index(self.regions["region_id"], name="region_id")

    def layer(self, name: str) -> Any:
        """Return a raw layer by name (``None`` when absent)."""
        if name not in RAW_LAYERS:
            raise BundleError(f"unknown layer {name!r}; valid raw layers: {', '.join(RAW_LAYERS)}")
        return getattr(self, name)

    @property
    def modalities(self) -> list[str]:
        """Modalities present, from raw layers or aggregates, in canonical order."""
        present = {mod for lay, mod in RAW_LAYERS.items() if getattr(self, lay) is not None}
        present |= {agg.modality for agg in self.aggregates.values()}
        return [m for m in MODALITIES if m in present]

    def aggregates_for(self, modality: str, kind: str | None = None) -> list[Aggregate]:
        """Aggregates of one modality (optionally one kind), in insertion order."""
        return [a for a in self.aggregates.values()
                if a.modality == modality and (kind is None or a.kind == kind)]

    def target_table(self) -> pd.DataFrame:
        """Targets as a wide ``region_id``-indexed table (NaN where a region has no value)."""
        if self.targets is None or self.targets.empty:
            return pd.DataFrame(index=self.region_ids)
        wide = self.targets.pivot(index="region_id", columns="target", values="value")
        order = list(dict.fromkeys(self.targets["target"]))
        return wide.reindex(index=self.region_ids, columns=order)

    def label_table(self) -> pd.DataFrame:
        """Labels as a wide ``region_id``-indexed table of strings (NaN where missing)."""
        if self.labels is None or self.labels.empty:
            return pd.DataFrame(index=self.region_ids)
        wide = self.labels.pivot(index="region_id", columns="label", values="value")
        return wide.reindex(index=self.region_ids)

    def summary(self) -> dict[str, Any]:
        """Counts per layer, for ``urbanrep validate`` and ``urbanrep info``."""
        out: dict[str, Any] = {
            "name": self.name,
            "regions": len(self.regions),
            "crs": self.crs.to_string() if self.crs is not None else None,
            "modalities": self.modalities,
            "layers": {lay: len(getattr(self, lay)) for lay in RAW_LAYERS if getattr(self, lay) is not None},
            "aggregates": {a.name: f"{a.modality}/{a.kind} {a.table.shape[0]}x{a.table.shape[1]}"
                           for a in self.aggregates.values()},
            "targets": list(self.target_table().columns),
            "labels": list(self.label_table().columns),
        }
        return out

    def summary_line(self) -> str:
        """One-line summary: name, regions, CRS, modalities with record counts, targets."""
        s = self.summary()
        parts = [f"{k}={v}" for k, v in s["layers"].items()]
        parts += [f"{a.name}[{a.modality}]" for a in self.aggregates.values()]
        return (f"{s['name']}: {s['regions']} regions, crs={s['crs']}, modalities={','.join(s['modalities']) or 'none'}"
                f" ({'; '.join(parts)}), targets={','.join(s['targets']) or 'none'}"
                f", labels={','.join(s['labels']) or 'none'}")
