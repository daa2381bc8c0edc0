"""Figures of a run: embedding map, fusion-weight maps, prediction and error maps, predicted vs
observed, loss curve.

Maps are drawn in a metric CRS (the regions' own, or their UTM zone when they are in degrees),
with a scale bar and the CRS named in the corner. Scatter plots carry the R² that
``metrics.json`` reports for the target (the same number as the report's table), not one
recomputed from the plotted points, which average the out-of-fold predictions of the repeats.

Drawing uses matplotlib's object API (``matplotlib.figure.Figure`` rendered by the Agg canvas),
never ``pyplot`` state, so it works headless and does not change the caller's backend.
matplotlib is imported lazily (``pip install urbanrep[plotting]``). Every PNG is written
atomically.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import geopandas as gpd
import numpy as np
import pandas as pd

from urbanrep.atomic import atomic_path
from urbanrep.export.gis import ExportError, join_regions, predictions_wide, region_table

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

FIGURES_DIR = "figures"
MISSING_COLOR = "#d9d9d9"
_SLUG_RE = re.compile(r"[^A-Za-z0-9_.-]+")


def _slug(name: str) -> str:
    return _SLUG_RE.sub("_", str(name)).strip("_") or "unnamed"


def _new_figure(figsize: tuple[float, float]) -> Figure:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ExportError("figures need matplotlib: pip install 'urbanrep[plotting]'") from exc
    return Figure(figsize=figsize, dpi=100, layout="constrained")


def _save(fig: Figure, path: str | Path) -> Path:
    """Render ``fig`` with the Agg canvas to ``path`` (PNG) atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path


def _map_size(regions: gpd.GeoDataFrame, legend: bool) -> tuple[float, float]:
    """Figure size fitting the regions' extent (height 7 in, width 4-10 in)."""
    minx, miny, maxx, maxy = regions.total_bounds
    width, height = maxx - minx, maxy - miny
    if regions.crs is not None and regions.crs.is_geographic:
        width *= np.cos(np.deg2rad((miny + maxy) / 2))
    aspect = width / height if height > 0 else 1.0
    return float(np.clip(6.5 * aspect + (2.0 if legend else 0.6), 4.0, 10.0)), 7.0


def _map_axes(fig: Figure, title: str) -> Any:
    ax = fig.subplots()
    ax.set_title(title)
    ax.set_axis_off()
    return ax


def metric_regions(regions: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """The regions in a metric CRS: their own when projected, else their UTM zone."""
    if regions.crs is None or not regions.crs.is_geographic:
        return regions
    return regions.to_crs(regions.estimate_utm_crs())


def _nice_length(span: float) -> float:
    """A round scale-bar length (1, 2 or 5 x 10^k metres) of about a fifth of ``span``."""
    target = max(span / 5.0, 1e-9)
    base = 10 ** np.floor(np.log10(target))
    return float(max(m * base for m in (1, 2, 5) if m * base <= target * 1.5))


def _finish_map(ax: Any, gdf: gpd.GeoDataFrame) -> None:
    """Scale bar (bottom left) and the CRS (bottom right) of a map drawn in a metric CRS."""
    minx, miny, maxx, maxy = gdf.total_bounds
    crs = gdf.crs
    if crs is not None and not crs.is_geographic:
        factor = float(crs.axis_info[0].unit_conversion_factor) if crs.axis_info else 1.0
        length_m = _nice_length((maxx - minx) * factor)
        length = length_m / factor
        x0, y0 = minx + 0.03 * (maxx - minx), miny - 0.04 * (maxy - miny)
        ax.plot([x0, x0 + length], [y0, y0], color="black", linewidth=3, solid_capstyle="butt")
        label = f"{length_m / 1000:g} km" if length_m >= 1000 else f"{length_m:g} m"
        ax.text(x0 + length / 2, y0 + 0.012 * (maxy - miny), label, ha="center", va="bottom", fontsize=8)
    name = "unknown CRS" if crs is None else (f"{crs.name} ({crs.to_string()})" if crs.to_epsg() else crs.name)
    ax.text(1.0, 0.0, f"CRS: {name}", transform=ax.transAxes, ha="right", va="bottom", fontsize=7, color="#444444")


def embedding_rgb(embeddings: pd.DataFrame) -> pd.DataFrame:
    """Project an embedding to 3 principal components scaled to RGB in ``[0, 1]``.

    Args:
        embeddings: region_id-indexed table ``[N, D]`` of floats; rows with a NaN are left out.

    Returns:
        DataFrame ``[N', 3]`` (columns ``r, g, b``) indexed by region_id. Each component is
        scaled by its 2nd–98th percentile range and clipped, so a few outliers do not wash out
        the map. With fewer than 3 informative components the missing channels are 0.5.
    """
    from sklearn.decomposition import PCA

    emb = region_table(embeddings, "embeddings")
    x = emb.to_numpy(dtype=np.float64)
    ok = np.isfinite(x).all(axis=1)
    x, index = x[ok], emb.index[ok]
    rgb = np.full((len(x), 3), 0.5)
    k = min(3, x.shape[0] - 1, x.shape[1]) if len(x) else 0
    if k >= 1:
        comp = PCA(n_components=k, svd_solver="full").fit_transform(x)
        lo, hi = np.percentile(comp, [2, 98], axis=0)
        span = np.where(hi - lo > 0, hi - lo, 1.0)
        rgb[:, :k] = np.clip((comp - lo) / span, 0.0, 1.0)
    return pd.DataFrame(rgb, index=index, columns=["r", "g", "b"])


def plot_embedding_map(regions: gpd.GeoDataFrame, embeddings: pd.DataFrame, path: str | Path) -> Path:
    """Map each region coloured by the first 3 principal components of its embedding (RGB).

    Regions without an embedding are grey. Similar colours mean similar embeddings.
    """
    rgb = embedding_rgb(embeddings)
    gdf = metric_regions(join_regions(regions, rgb, "embeddings"))
    colors = gdf[["r", "g", "b"]].to_numpy(dtype=np.float64, copy=True)
    missing = ~np.isfinite(colors).all(axis=1)
    colors[missing] = 0.85
    fig = _new_figure(_map_size(gdf, legend=False))
    ax = _map_axes(fig, "Embedding\nPCA components 1-3 as RGB")
    gdf.plot(ax=ax, color=[tuple(c) for c in colors], edgecolor="white", linewidth=0.3)
    _finish_map(ax, gdf)
    if missing.any():
        ax.text(0.01, 0.01, f"grey: {int(missing.sum())} region(s) without embedding",
                transform=ax.transAxes, fontsize=8)
    return _save(fig, path)


def plot_fusion_weights(regions: gpd.GeoDataFrame, weights: pd.DataFrame, out_dir: str | Path) -> dict[str, Path]:
    """One choropleth per modality of the region-specific fusion weights.

    Args:
        regions: Region polygons.
        weights: region_id-indexed table ``[N, M]``, one column per modality.
        out_dir: Folder for ``fusion_weight_<modality>.png``.

    Returns:
        ``{"fusion_weight_<modality>": path}``.
    """
    gdf = metric_regions(join_regions(regions, weights, "fusion_weights"))
    out: dict[str, Path] = {}
    for modality in [c for c in gdf.columns if c not in ("region_id", "geometry")]:
        values = pd.to_numeric(gdf[modality], errors="coerce")
        if not np.isfinite(values).any():
            log.info("fusion weight %s has no finite value; no map drawn", modality)
            continue
        fig = _new_figure(_map_size(gdf, legend=True))
        ax = _map_axes(fig, f"Fusion weight: {modality}\nmean {values.mean():.3f}")
        gdf.assign(**{modality: values}).plot(
            column=modality, ax=ax, cmap="viridis", legend=True, edgecolor="white", linewidth=0.3,
            vmin=float(values.min()), vmax=float(values.max()),
            legend_kwds={"label": "weight", "shrink": 0.7},
            missing_kwds={"color": MISSING_COLOR, "label": "modality absent"},
        )
        _finish_map(ax, gdf)
        name = f"fusion_weight_{_slug(modality)}"
        out[name] = _save(fig, Path(out_dir) / f"{name}.png")
    return out


def r2(observed: np.ndarray, predicted: np.ndarray) -> float:
    """Coefficient of determination over the pairs where both values are finite (NaN if < 2)."""
    from sklearn.metrics import r2_score

    ok = np.isfinite(observed) & np.isfinite(predicted)
    if ok.sum() < 2:
        return float("nan")
    return float(r2_score(observed[ok], predicted[ok]))


def plot_predictions(predictions: pd.DataFrame, out_dir: str | Path,
                     reported: dict[str, dict[str, Any]] | None = None) -> dict[str, Path]:
    """Predicted vs observed scatter per target, with the reported R² in the title.

    Args:
        predictions: Long out-of-fold predictions ``region_id, target, observed, predicted``
            (repeated rows per region and target are averaged, as in the GIS export).
        out_dir: Folder for ``pred_vs_obs_<target>.png``.
        reported: ``metrics.json``'s ``tasks``; the title shows its R² (± std over repeats),
            the one number the report gives for the target. Without it, the R² of the plotted
            points.

    Returns:
        ``{"pred_vs_obs_<target>": path}``.
    """
    repeats = int(predictions.groupby(["region_id", "target"]).size().max()) if len(predictions) else 1
    wide = predictions_wide(predictions)
    targets = [c[len("obs_"):] for c in wide.columns if c.startswith("obs_")]
    out: dict[str, Path] = {}
    for target in targets:
        obs = wide[f"obs_{target}"].to_numpy(dtype=np.float64)
        pred = wide[f"pred_{target}"].to_numpy(dtype=np.float64)
        ok = np.isfinite(obs) & np.isfinite(pred)
        if not ok.any():
            log.info("target %s has no finite prediction; no scatter drawn", target)
            continue
        fig = _new_figure((5.5, 5.5))
        ax = fig.subplots()
        ax.scatter(obs[ok], pred[ok], s=14, alpha=0.7, color="#1f77b4", edgecolors="none")
        lo = float(min(obs[ok].min(), pred[ok].min()))
        hi = float(max(obs[ok].max(), pred[ok].max()))
        ax.plot([lo, hi], [lo, hi], linestyle="--", color="#555555", linewidth=1, label="predicted = observed")
        ax.set_xlabel(f"observed {target}")
        ax.set_ylabel(f"predicted {target} (out-of-fold" + (f", mean of {repeats} repeats)" if repeats > 1 else ")"))
        task = (reported or {}).get(target) or {}
        if isinstance(task.get("r2"), int | float):
            std = f" ± {task['r2_std']:.3f}" if task.get("r2_std") else ""
            ax.set_title(f"{target}: R² = {task['r2']:.3f}{std} (n = {int(ok.sum())})")
        else:
            ax.set_title(f"{target}: R² = {r2(obs, pred):.3f} (n = {int(ok.sum())})")
        ax.legend(loc="upper left", fontsize=8)
        name = f"pred_vs_obs_{_slug(target)}"
        out[name] = _save(fig, Path(out_dir) / f"{name}.png")
    return out


def plot_prediction_maps(regions: gpd.GeoDataFrame, predictions: pd.DataFrame, out_dir: str | Path
                         ) -> dict[str, Path]:
    """Per target, two maps side by side: the out-of-fold prediction and its error.

    The prediction map shares its colour scale with the observed values' range; the error map
    (predicted - observed) is diverging and centred on 0 (red: over-predicted, blue: under).
    Regions without a prediction are grey.

    Returns:
        ``{"pred_map_<target>": path}``.
    """
    wide = predictions_wide(predictions)
    gdf = metric_regions(join_regions(regions, wide, "predictions"))
    targets = [c[len("obs_"):] for c in wide.columns if c.startswith("obs_")]
    out: dict[str, Path] = {}
    for target in targets:
        obs = pd.to_numeric(gdf[f"obs_{target}"], errors="coerce")
        pred = pd.to_numeric(gdf[f"pred_{target}"], errors="coerce")
        if not np.isfinite(pred).any():
            continue
        err = pred - obs
        w, h = _map_size(gdf, legend=True)
        fig = _new_figure((min(2 * w, 16.0), h))
        ax_p, ax_e = fig.subplots(1, 2)
        lo, hi = float(np.nanmin(obs)), float(np.nanmax(obs))
        bound = float(np.nanmax(np.abs(err))) or 1.0
        for ax, col, values, kw in (
            (ax_p, "value", pred, {"cmap": "viridis", "vmin": lo, "vmax": hi}),
            (ax_e, "value", err, {"cmap": "RdBu_r", "vmin": -bound, "vmax": bound}),
        ):
            ax.set_axis_off()
            gdf.assign(**{col: values}).plot(
                column=col, ax=ax, legend=True, edgecolor="white", linewidth=0.3,
                legend_kwds={"shrink": 0.7}, missing_kwds={"color": MISSING_COLOR}, **kw)
            _finish_map(ax, gdf)
        ax_p.set_title(f"{target}: out-of-fold prediction")
        ax_e.set_title(f"{target}: error (predicted - observed)\nMAE {np.nanmean(np.abs(err)):.4g}")
        name = f"pred_map_{_slug(target)}"
        out[name] = _save(fig, Path(out_dir) / f"{name}.png")
    return out


def plot_loss(loss: pd.DataFrame, path: str | Path) -> Path:
    """Training-loss curve: ``total`` (thick) and every loss part, log y axis.

    Args:
        loss: Table with ``epoch``, ``total`` and one column per loss part.
        path: PNG path.

    A symmetric-log axis is used instead when some plotted value is ≤ 0 (a log axis would hide it).
    """
    if "total" not in loss.columns:
        raise ExportError(f"loss table has no 'total' column (columns: {list(loss.columns)}); "
                          "expected epoch, total and one column per loss part")
    epoch = loss["epoch"].to_numpy() if "epoch" in loss.columns else np.arange(len(loss))
    parts = [c for c in loss.columns if c not in ("epoch", "total")]
    fig = _new_figure((7, 4.5))
    ax = fig.subplots()
    plotted: list[np.ndarray] = []
    for col in ["total", *parts]:
        y = pd.to_numeric(loss[col], errors="coerce").to_numpy(dtype=np.float64)
        if not np.isfinite(y).any():
            continue
        plotted.append(y[np.isfinite(y)])
        ax.plot(epoch, y, label=col, linewidth=2.2 if col == "total" else 1.0,
                color="black" if col == "total" else None)
    values = np.concatenate(plotted) if plotted else np.array([1.0])
    if (values > 0).all():
        ax.set_yscale("log")
    else:
        ax.set_yscale("symlog", linthresh=max(float(np.abs(values[values != 0]).min(initial=1.0)), 1e-6))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title("Training loss")
    ax.legend(fontsize=8, ncols=2)
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path)


def make_figures(
    run_dir: str | Path,
    regions: gpd.GeoDataFrame | None = None,
    out_dir: str | Path | None = None,
) -> dict[str, Path]:
    """Draw every figure a run folder allows and save the PNGs to ``run_dir/figures``.

    Args:
        run_dir: Run folder (``embeddings.parquet``, ``fusion_weights.parquet``,
            ``predictions.parquet``, ``loss.csv``; each optional).
        regions: Region polygons; without them the maps are skipped.
        out_dir: Output folder; default ``run_dir / "figures"``.

    Returns:
        Figure name → PNG path, in drawing order: ``embedding_pca``,
        ``fusion_weight_<modality>``..., ``pred_map_<target>``..., ``pred_vs_obs_<target>``...,
        ``loss``.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ExportError(f"run folder {run_dir} does not exist; pass the folder written by 'urbanrep run'")
    out = Path(out_dir) if out_dir is not None else run_dir / FIGURES_DIR
    figures: dict[str, Path] = {}

    def read(name: str) -> pd.DataFrame | None:
        path = run_dir / name
        if not path.exists():
            return None
        try:
            return pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
        except Exception as exc:
            raise ExportError(f"cannot read {path}: {exc}; re-run the pipeline to rewrite it") from exc

    emb, weights = read("embeddings.parquet"), read("fusion_weights.parquet")
    if regions is None and (emb is not None or weights is not None):
        log.info("no regions given: embedding and fusion-weight maps skipped")
    if regions is not None and emb is not None:
        figures["embedding_pca"] = plot_embedding_map(regions, emb, out / "embedding_pca.png")
    if regions is not None and weights is not None:
        figures.update(plot_fusion_weights(regions, weights, out))
    preds = read("predictions.parquet")
    if preds is not None:
        import json

        metrics_path = run_dir / "metrics.json"
        try:
            reported = json.loads(metrics_path.read_text()).get("tasks") if metrics_path.exists() else None
        except (OSError, ValueError, AttributeError):
            reported = None  # the report names an unreadable metrics.json itself
        if regions is not None:
            figures.update(plot_prediction_maps(regions, preds, out))
        figures.update(plot_predictions(preds, out, reported if isinstance(reported, dict) else None))
    loss = read("loss.csv")
    if loss is not None and len(loss):
        figures["loss"] = plot_loss(loss, out / "loss.png")
    log.info("drew %d figure(s) in %s", len(figures), out)
    return figures
