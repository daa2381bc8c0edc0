"""Reference embeddings: raw per-region features of a bundle and published embeddings.

Raw-feature baselines are built from a bundle's inputs only — its aggregates and raw layers —
and never from its targets or labels (and ``urbanrep.converters`` never reads target-derived files such
as NYC's check-in similarity). Their optional standardisation and PCA are unsupervised and fit
on all regions of the city (transductive, as the learned embeddings are); they use no target.

Per modality, aggregates win when present; otherwise the raw layer is summarised:

- ``poi``: counts per ``category`` (raw points) or the vector aggregates.
- ``mobility``: out-/in-flow totals per OD matrix and time slice (``mobility="totals"``), or
  additionally each region's OD row and column as shares (``mobility="shares"``, ``2N`` columns);
  vector aggregates (e.g. hourly flows) as they are; raw trips are first counted into an OD matrix.
- ``landuse``: vector aggregates, or the area share of each ``class`` (raw polygons).
- ``road``: vector aggregates, or road length per ``class`` per km² (raw lines).
- ``remote_sensing`` / ``street_view``: vector aggregates, or the mean of the precomputed
  ``feature`` column over the images of a region plus the image count.

Count-valued columns (non-negative integers) are ``log1p``-scaled unless ``log1p=False``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from urbanrep.bundle import CityBundle
from urbanrep.bundle.spec import MODALITIES, RAW_LAYERS
from urbanrep.errors import ConfigError
from urbanrep.evaluate.protocols import EvaluationError

log = logging.getLogger(__name__)

MOBILITY_MODES: tuple[str, ...] = ("totals", "shares")
#: Published embeddings in the data root: name -> (dataset folder, file relative to it).
PUBLISHED_EMBEDDINGS: dict[str, tuple[str, str]] = {
    "gurpp": ("nyc_manhattan180", "baseline_embeddings/gurpp_emb.npy"),
}
_LAYER_OF = {mod: lay for lay, mod in RAW_LAYERS.items()}


def _is_count(values: np.ndarray) -> bool:
    return bool(values.size) and bool((values >= 0).all()) and bool(np.allclose(values, np.round(values)))


def _frame(values: np.ndarray, columns: Sequence[str], ids: pd.Index, log1p: bool) -> pd.DataFrame:
    values = np.asarray(values, dtype=np.float64)
    if log1p and _is_count(values):
        values = np.log1p(values)
    return pd.DataFrame(values, index=ids, columns=list(columns))


def _metric(gdf: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    if gdf.crs is not None and gdf.crs.is_geographic:
        return gdf.to_crs(gdf.estimate_utm_crs())
    return gdf


def _same_crs(layer: gpd.GeoDataFrame, regions: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    if layer.crs is not None and regions.crs is not None and layer.crs != regions.crs:
        return layer.to_crs(regions.crs)
    return layer


def _assign_points(points: gpd.GeoSeries, regions: gpd.GeoDataFrame) -> np.ndarray:
    """Position of the region holding each point (``-1`` outside every region); first match wins."""
    pts = gpd.GeoDataFrame(geometry=points.reset_index(drop=True))
    pts = _same_crs(pts, regions)
    reg = gpd.GeoDataFrame({"_pos": np.arange(len(regions))}, geometry=regions.geometry.to_numpy(), crs=regions.crs)
    joined = gpd.sjoin(pts, reg, how="left", predicate="intersects")
    joined = joined[~joined.index.duplicated(keep="first")]
    return joined["_pos"].reindex(range(len(pts))).fillna(-1).to_numpy(dtype=np.int64)


def _category_counts(pos: np.ndarray, cats: pd.Series, n: int, weights: np.ndarray | None = None) -> pd.DataFrame:
    codes, names = pd.factorize(cats.astype(str), sort=True)
    ok = pos >= 0
    out = np.zeros((n, len(names)), dtype=np.float64)
    w = np.ones(len(pos)) if weights is None else weights
    np.add.at(out, (pos[ok], codes[ok]), w[ok])
    return pd.DataFrame(out, columns=[str(c) for c in names])


def _overlap_by_class(layer: gpd.GeoDataFrame, regions: gpd.GeoDataFrame, measure: str) -> pd.DataFrame:
    """Area (``measure="area"``) or length of ``layer`` inside each region, per ``class``: ``[N, C]``."""
    reg = _metric(regions)
    lay = _same_crs(layer, reg).reset_index(drop=True)
    reg_g = gpd.GeoDataFrame({"_pos": np.arange(len(reg))}, geometry=reg.geometry.to_numpy(), crs=reg.crs)
    joined = gpd.sjoin(gpd.GeoDataFrame({"_cls": lay["class"].astype(str)}, geometry=lay.geometry, crs=lay.crs),
                       reg_g, how="inner", predicate="intersects")
    inter = shapely.intersection(joined.geometry.to_numpy(), reg.geometry.to_numpy()[joined["_pos"].to_numpy()])
    amount = shapely.area(inter) if measure == "area" else shapely.length(inter)
    return _category_counts(joined["_pos"].to_numpy(dtype=np.int64), joined["_cls"], len(reg), amount)


def _od_from_trips(trips: pd.DataFrame, regions: gpd.GeoDataFrame, ids: pd.Index) -> np.ndarray:
    """Raw trips counted into a ``[1, N, N]`` OD matrix (by region columns or by point geometry)."""
    n = len(ids)
    pos = pd.Series(np.arange(n), index=ids)
    if {"origin_region", "dest_region"} <= set(trips.columns):
        o = pos.reindex(trips["origin_region"]).fillna(-1).to_numpy(dtype=np.int64)
        d = pos.reindex(trips["dest_region"]).fillna(-1).to_numpy(dtype=np.int64)
    elif {"origin", "destination"} <= set(trips.columns):
        o = _assign_points(gpd.GeoSeries(trips["origin"]), regions)
        d = _assign_points(gpd.GeoSeries(trips["destination"]), regions)
    else:
        raise EvaluationError("the trips layer has neither origin_region/dest_region nor origin/destination "
                              "points; fix the bundle's trips.parquet")
    w = trips["count"].to_numpy(dtype=np.float64) if "count" in trips.columns else np.ones(len(trips))
    ok = (o >= 0) & (d >= 0)
    od = np.zeros((1, n, n), dtype=np.float64)
    np.add.at(od, (0, o[ok], d[ok]), w[ok])
    return od


def _matrix_features(name: str, values: np.ndarray, ids: pd.Index, mobility: str, log1p: bool) -> list[pd.DataFrame]:
    """Totals per slice (and row/column shares) of a ``[S, N, N]`` OD matrix."""
    s = values.shape[0]
    suffix = [""] if s == 1 else [f"_s{k}" for k in range(s)]
    out_t = values.sum(axis=2).T  # [N, S]
    in_t = values.sum(axis=1).T
    blocks = [_frame(np.hstack([out_t, in_t]), [f"{name}:out{x}" for x in suffix] + [f"{name}:in{x}" for x in suffix],
                     ids, log1p)]
    if mobility == "shares":
        total = values.sum(axis=0)
        rows = total.sum(axis=1, keepdims=True)
        cols = total.sum(axis=0, keepdims=True)
        out_share = total / np.where(rows > 0, rows, 1.0)
        in_share = (total / np.where(cols > 0, cols, 1.0)).T
        names = [f"{name}:out_to_{r}" for r in ids] + [f"{name}:in_from_{r}" for r in ids]
        blocks.append(pd.DataFrame(np.hstack([out_share, in_share]), index=ids, columns=names))
    return blocks


def _raw_layer_features(bundle: CityBundle, modality: str, log1p: bool, mobility: str) -> list[pd.DataFrame]:
    layer_name = _LAYER_OF[modality]
    layer = bundle.layer(layer_name)
    ids = bundle.region_ids
    n = len(ids)
    if layer is None or len(layer) == 0:
        return []
    if modality == "poi":
        counts = _category_counts(_assign_points(layer.geometry, bundle.regions), layer["category"], n)
        return [_frame(counts.to_numpy(), [f"pois:{c}" for c in counts.columns], ids, log1p)]
    if modality == "mobility":
        return _matrix_features("trips", _od_from_trips(layer, bundle.regions, ids), ids, mobility, log1p)
    if modality == "landuse":
        area = _overlap_by_class(layer, bundle.regions, "area")
        reg_area = shapely.area(_metric(bundle.regions).geometry.to_numpy())
        return [pd.DataFrame(area.to_numpy() / reg_area[:, None], index=ids,
                             columns=[f"landuse:{c}_share" for c in area.columns])]
    if modality == "road":
        length = _overlap_by_class(layer, bundle.regions, "length")
        km2 = shapely.area(_metric(bundle.regions).geometry.to_numpy()) / 1e6
        return [pd.DataFrame(length.to_numpy() / 1e3 / km2[:, None], index=ids,
                             columns=[f"roads:{c}_km_per_km2" for c in length.columns])]
    # remote_sensing / street_view: precomputed features averaged per region
    if "feature" not in layer.columns:
        log.info("%s layer has no precomputed 'feature' column: encode the images first "
                 "(urbanrep.images); skipped in the raw baseline", layer_name)
        return []
    feats = np.stack([np.asarray(f, dtype=np.float64) for f in layer["feature"]])
    pos = _assign_points(layer.geometry.centroid if layer.geom_type.ne("Point").any() else layer.geometry,
                         bundle.regions)
    ok = pos >= 0
    sums = np.zeros((n, feats.shape[1]))
    np.add.at(sums, pos[ok], feats[ok])
    cnt = np.bincount(pos[ok], minlength=n).astype(np.float64)
    mean = sums / np.where(cnt > 0, cnt, 1.0)[:, None]
    return [pd.DataFrame(mean, index=ids, columns=[f"{layer_name}:f{i:03d}" for i in range(feats.shape[1])]),
            _frame(cnt[:, None], [f"{layer_name}:count"], ids, log1p)]


def modality_features(bundle: CityBundle, modality: str, *, log1p: bool = True,
                      mobility: str = "totals") -> pd.DataFrame | None:
    """Raw per-region features of one modality (aggregates first, else the raw layer).

    Args:
        bundle: City bundle.
        modality: One of :data:`urbanrep.bundle.spec.MODALITIES`.
        log1p: ``log1p``-scale count-valued columns.
        mobility: ``"totals"`` or ``"shares"`` (see the module docstring).

    Returns:
        ``[N, F]`` table indexed by ``region_id`` in bundle order, or ``None`` when the bundle
        has nothing usable for this modality.
    """
    if modality not in MODALITIES:
        raise ConfigError(f"unknown modality {modality!r}; choose from {', '.join(MODALITIES)}")
    if mobility not in MOBILITY_MODES:
        raise ConfigError(f"unknown mobility mode {mobility!r}; choose from {', '.join(MOBILITY_MODES)}")
    ids = bundle.region_ids
    blocks: list[pd.DataFrame] = []
    for agg in bundle.aggregates_for(modality):
        values, _ = agg.dense(ids)
        if agg.kind == "vector":
            blocks.append(_frame(values, [f"{agg.name}:{c}" for c in agg.value_columns()], ids, log1p))
        else:
            blocks.extend(_matrix_features(agg.name, values, ids, mobility, log1p))
    if not blocks:
        blocks = _raw_layer_features(bundle, modality, log1p, mobility)
    if not blocks:
        return None
    out = pd.concat(blocks, axis=1)
    out.index.name = "region_id"
    return out


def _reduce(features: pd.DataFrame, dim: int | None, seed: int, balance: Sequence[int] | None = None) -> pd.DataFrame:
    """Standardise (optionally weight blocks equally) and project on ``dim`` principal components."""
    x = features.to_numpy(dtype=np.float64)
    keep = x.std(axis=0) > 0
    x = StandardScaler().fit_transform(x[:, keep])
    if balance is not None:
        block = np.repeat(np.arange(len(balance)), balance)[keep]
        kept_per_block = np.bincount(block, minlength=len(balance))
        x = x / np.sqrt(kept_per_block[block])[None, :]
    k = x.shape[1] if dim is None else min(dim, x.shape[0], x.shape[1])
    z = PCA(n_components=k, random_state=seed).fit_transform(x)
    width = len(str(max(k - 1, 0)))
    return pd.DataFrame(z, index=features.index, columns=[f"pc_{i:0{width}d}" for i in range(k)])


def raw_modality_baseline(bundle: CityBundle, modality: str, dim: int | None = None, *, log1p: bool = True,
                          mobility: str = "totals", seed: int = 0) -> pd.DataFrame:
    """One modality's raw features as an embedding table (``"raw_poi"``, ``"raw_landuse"``, ...).

    Args:
        bundle: City bundle.
        modality: Modality name.
        dim: If set, standardise and keep this many principal components (unsupervised, all
            regions, no targets); ``None`` returns the features as they are (after ``log1p``).
        log1p: ``log1p``-scale count-valued columns.
        mobility: ``"totals"`` or ``"shares"``.
        seed: PCA seed.

    Returns:
        ``[N, F]`` table indexed by ``region_id``.
    """
    feats = modality_features(bundle, modality, log1p=log1p, mobility=mobility)
    if feats is None:
        raise EvaluationError(f"bundle {bundle.name!r} has no {modality} data (neither an aggregate nor a raw "
                              f"layer with usable columns); available modalities: {', '.join(bundle.modalities)}")
    return feats if dim is None else _reduce(feats, dim, seed)


def raw_feature_baseline(bundle: CityBundle, dim: int | None = 64, *, modalities: Sequence[str] | None = None,
                         log1p: bool = True, mobility: str = "totals", balance_blocks: bool = True,
                         seed: int = 0) -> pd.DataFrame:
    """Every modality's raw per-region features concatenated, standardised and PCA-reduced.

    Standardisation and PCA are unsupervised, fit on all regions of the city, and never see a
    target or label. With ``balance_blocks`` each modality's block is scaled by
    ``1/sqrt(columns)`` so that a 512-column image block does not outweigh 26 POI counts.

    Args:
        bundle: City bundle.
        dim: Principal components to keep (``None``: all).
        modalities: Modalities to use (default: every modality of the bundle with usable data).
        log1p: ``log1p``-scale count-valued columns.
        mobility: ``"totals"`` or ``"shares"``.
        balance_blocks: Give every modality the same total variance before PCA.
        seed: PCA seed.

    Returns:
        ``[N, dim]`` table indexed by ``region_id`` with columns ``pc_*``.
    """
    mods = list(modalities) if modalities is not None else list(MODALITIES)
    blocks = []
    for m in mods:
        f = modality_features(bundle, m, log1p=log1p, mobility=mobility)
        if f is None:
            if modalities is not None:
                raise EvaluationError(f"bundle {bundle.name!r} has no usable {m} data for the raw baseline")
            continue
        blocks.append(f)
    if not blocks:
        raise EvaluationError(f"bundle {bundle.name!r} has no modality data to build a raw-feature baseline from")
    feats = pd.concat(blocks, axis=1)
    return _reduce(feats, dim, seed, [b.shape[1] for b in blocks] if balance_blocks else None)


def _baseline_registry() -> dict[str, Callable[..., pd.DataFrame]]:
    reg: dict[str, Callable[..., pd.DataFrame]] = {"raw_all": raw_feature_baseline}
    for m in MODALITIES:
        reg[f"raw_{m}"] = partial(raw_modality_baseline, modality=m)
    return reg


#: Baseline name -> ``fn(bundle, **kwargs) -> DataFrame``.
BASELINES: dict[str, Callable[..., pd.DataFrame]] = _baseline_registry()


def available_baselines(bundle: CityBundle) -> list[str]:
    """Baseline names that the bundle has data for (``raw_all`` plus one per present modality)."""
    names = ["raw_all"] if bundle.modalities else []
    return names + [f"raw_{m}" for m in bundle.modalities
                    if modality_features(bundle, m) is not None]


def baseline_embedding(name: str, bundle: CityBundle, **kwargs: Any) -> pd.DataFrame:
    """Build a named baseline embedding (see :data:`BASELINES`)."""
    if name not in BASELINES:
        raise ConfigError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
    return BASELINES[name](bundle, **kwargs)


def published_embedding(data_root: str | Path | None = None, name: str = "gurpp") -> pd.DataFrame:
    """A published embedding from the data root as a ``region_id``-indexed table.

    Args:
        data_root: Data root (default :func:`urbanrep.datasets.resolve_data_root`).
        name: Key of :data:`PUBLISHED_EMBEDDINGS` (``"gurpp"``: NYC-180, ids ``0..179`` in row order).

    Returns:
        ``[N, D]`` float table indexed by ``region_id``.
    """
    from urbanrep.datasets import resolve_data_root

    if name not in PUBLISHED_EMBEDDINGS:
        raise ConfigError(f"unknown published embedding {name!r}; choose from {', '.join(PUBLISHED_EMBEDDINGS)}")
    folder, rel = PUBLISHED_EMBEDDINGS[name]
    path = resolve_data_root(data_root) / folder / rel
    if not path.exists():
        raise EvaluationError(f"missing {path}; set --data-root / URBANREP_DATA to the shared data folder")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise EvaluationError(f"cannot read {path}: truncated or corrupt ({exc})") from exc
    if arr.ndim != 2:
        raise EvaluationError(f"{path}: expected a 2-D [regions, dims] array, got shape {arr.shape}")
    width = len(str(arr.shape[1] - 1))
    return pd.DataFrame(arr.astype(np.float64), index=pd.RangeIndex(arr.shape[0], name="region_id"),
                        columns=[f"{name}_{i:0{width}d}" for i in range(arr.shape[1])])
