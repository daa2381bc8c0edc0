"""Static, self-contained HTML report of a run folder.

``report.html`` holds the run information (``config.json``), the metrics (``metrics.json``)
with the protocol in words, each target's definition and unit (from the bundle's provenance,
which the converters fill in) with flags for zero-valued targets and negative predictions of
counts, summaries of the embedding and fusion weights, an interactive region map
(:mod:`urbanrep.export.interactive`: inline SVG and script) and every figure of
:func:`urbanrep.export.maps.make_figures` embedded as base64 PNG, so the single file can be
mailed or archived without the folder. No external script, style sheet or font: it works offline.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd

from urbanrep import __version__
from urbanrep.atomic import write_text_atomic
from urbanrep.export.gis import ExportError, region_table
from urbanrep.export.maps import make_figures
from urbanrep.written import COLUMNS_ATTR, column_span

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
#: Metric columns shown first in the task table, in this order.
TASK_METRICS = ("mae", "rmse", "r2", "r2_std")
_LABELS = {"mae": "MAE", "rmse": "RMSE", "r2": "R²", "r2_std": "R² std", "nmi": "NMI", "ari": "ARI"}
_CAPTIONS = {
    "embedding_pca": "Embedding map: the first three principal components of each region's embedding as RGB; "
                     "similar colours mean similar embeddings.",
    "loss": "Training loss per epoch: total and each loss part (log scale).",
}

_CSS = """
body{font-family:"DejaVu Sans","Liberation Sans",Arial,sans-serif;margin:24px auto;max-width:1100px;
color:#222;background:#fff;line-height:1.4}
h1{font-size:1.6em;margin-bottom:0.2em}h2{font-size:1.25em;border-bottom:2px solid #ccd;padding-bottom:3px;
margin-top:1.6em}
.sub{color:#666;font-size:0.9em}
table{border-collapse:collapse;margin:8px 0 12px 0;font-size:0.92em}
th,td{border:1px solid #ccd;padding:4px 10px;text-align:right}
th{background:#eef0f6}td.k,th.k{text-align:left}
.figs{display:flex;flex-wrap:wrap;gap:14px}
figure{margin:0;border:1px solid #dde;padding:6px;background:#fafbfd;max-width:520px}
figure img{max-width:100%;max-height:560px;width:auto;height:auto;display:block}
figcaption{font-size:0.85em;color:#444;margin-top:4px}
pre{background:#f5f5f7;padding:8px;overflow-x:auto;font-size:0.85em}
.note{color:#8a5a00}
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        v = float(value)
        if math.isnan(v):
            return "–"
        if v != 0 and (abs(v) >= 1e6 or abs(v) < 1e-4):
            return f"{v:.3e}"
        return f"{v:.1f}" if abs(v) >= 100 else f"{v:.4f}"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot parse {path}: {exc}; fix or re-create the file") from exc
    if not isinstance(data, dict):
        raise ExportError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def _flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            rows += _flatten(value, f"{name}.")
        else:
            rows.append((name, value))
    return rows


def _table(header: list[str], rows: list[list[str]], key_cols: int = 1) -> str:
    """HTML table; cells must already be escaped."""
    th = "".join(f'<th class="k">{h}</th>' if i < key_cols else f"<th>{h}</th>" for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(f'<td class="k">{c}</td>' if i < key_cols else f"<td>{c}</td>" for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _metrics_html(metrics: dict[str, Any] | None) -> str:
    if metrics is None:
        return '<p class="note">No metrics.json in this run folder.</p>'
    parts: list[str] = []
    if "protocol" in metrics:
        proto = metrics["protocol"]
        text = json.dumps(proto) if isinstance(proto, dict | list) else str(proto)
        parts.append(f"<p>Protocol: <b>{_esc(text)}</b></p>")
    tasks = metrics.get("tasks") or {}
    if isinstance(tasks, dict) and tasks:
        cols = list(TASK_METRICS)
        for res in tasks.values():
            if isinstance(res, dict):
                cols += [k for k in res if k not in cols and not isinstance(res[k], dict | list)]
        rows = [[_esc(t)] + [_esc(_fmt(res.get(c) if isinstance(res, dict) else None)) for c in cols]
                for t, res in tasks.items()]
        parts.append("<h3>Prediction tasks (out-of-fold)</h3>")
        parts.append(_table(["target"] + [_esc(_LABELS.get(c, c)) for c in cols], rows))
    clustering = metrics.get("clustering")
    if isinstance(clustering, dict) and clustering:
        scalar = {k: v for k, v in clustering.items() if not isinstance(v, dict | list)}
        parts.append("<h3>Clustering</h3>")
        parts.append(_table([_esc(_LABELS.get(k, k)) for k in scalar],
                            [[_esc(_fmt(v)) for v in scalar.values()]], key_cols=0))
    landuse = metrics.get("landuse")
    if isinstance(landuse, dict) and landuse:
        cols = ["l1", "kl", "cosine", "l1_std", "kl_std", "cosine_std", "n", "classes"]
        rows = [[_esc(g)] + [_esc(_fmt(res.get(c))) for c in cols] for g, res in landuse.items()]
        parts.append("<h3>Share prediction (out-of-fold)</h3>")
        parts.append(_table(["target group", *cols], rows))
    parts.append(_inputs_html(metrics))
    skip = ("protocol", "tasks", "clustering", "landuse", "inputs")
    rest = {k: v for k, v in metrics.items() if k not in skip}
    if rest:
        parts.append("<details><summary>Other metrics</summary><pre>"
                     f"{_esc(json.dumps(rest, indent=2, default=str))}</pre></details>")
    return "\n".join(parts)


def _inputs_html(metrics: dict[str, Any]) -> str:
    """The embedding beside the model's own inputs under the same protocol (``metrics["inputs"]``)."""
    from urbanrep.evaluate.report import input_rows

    rows = input_rows(metrics)
    if not rows:
        return ""
    names = list(metrics.get("inputs") or {})
    body = [[_esc(label), f"<b>{_esc(_fmt(own))}</b>" if better else _esc(_fmt(own)),
             *[_esc(_fmt(v)) for v in values], "yes" if better else "<b>no</b>"]
            for label, own, values, better in rows]
    return ("<h3>Against the model's own inputs</h3><p class=\"note\">Each input modality's features, as the "
            "model was given them, through the same evaluation (protocol, folds, probe). Where an input does "
            "better, the embedding does not earn its keep on that task in this city.</p>"
            + _table(["figure", "embedding", *[_esc(n) for n in names], "embedding at least as good"], body))


def _config_html(config: dict[str, Any] | None) -> str:
    if config is None:
        return '<p class="note">No config.json in this run folder.</p>'
    rows = [[_esc(k), _esc(_fmt(v))] for k, v in _flatten(config)]
    return (_table(["setting", "value"], rows, key_cols=2)
            + "<details><summary>config.json</summary><pre>"
            + _esc(json.dumps(config, indent=2, default=str)) + "</pre></details>")


def _tables_html(run_dir: Path, regions: gpd.GeoDataFrame | None) -> str:
    parts: list[str] = []
    n_regions = len(regions) if regions is not None else None
    emb_path = run_dir / "embeddings.parquet"
    if emb_path.exists():
        raw = pd.read_parquet(emb_path)
        emb = region_table(raw, "embeddings")
        complete = int(np.isfinite(emb.to_numpy(dtype=np.float64)).all(axis=1).sum())
        of = f" of {n_regions} regions" if n_regions is not None else ""
        parts.append(f"<p>Embedding: <b>{len(emb)}</b> rows{_esc(of)}, <b>{emb.shape[1]}</b> dimensions, "
                     f"{complete} rows complete (no NaN).</p>")
        layout = raw.attrs.get(COLUMNS_ATTR) or []
        if layout:
            rows = [[_esc(column_span(b)), _esc(b["holds"])] for b in layout]
            parts.append("<h3>What the embedding's columns hold</h3>" + _table(["columns", "holds"], rows))
    w_path = run_dir / "fusion_weights.parquet"
    if w_path.exists():
        w = region_table(pd.read_parquet(w_path), "fusion_weights")
        desc = w.apply(pd.to_numeric, errors="coerce")
        rows = [[_esc(m), _fmt(desc[m].mean()), _fmt(desc[m].min()), _fmt(desc[m].max()),
                 str(int(desc[m].notna().sum()))] for m in desc.columns]
        parts.append("<h3>Region-specific fusion weights</h3>")
        parts.append(_table(["modality", "mean", "min", "max", "regions"], rows))
    return "\n".join(parts) or '<p class="note">No embeddings.parquet or fusion_weights.parquet.</p>'


def _caption(name: str) -> str:
    if name in _CAPTIONS:
        return _CAPTIONS[name]
    if name.startswith("fusion_weight_"):
        return f"Fusion weight of modality {name[len('fusion_weight_'):]} per region (grey: modality absent)."
    if name.startswith("pred_vs_obs_"):
        return (f"Out-of-fold predicted vs observed {name[len('pred_vs_obs_'):]} (each point: a region's mean over "
                "the repeats); dashed line: perfect prediction. The R² in the title is the one in the table.")
    if name.startswith("pred_map_"):
        return (f"{name[len('pred_map_'):]}: out-of-fold prediction (left, colour scale of the observed range) and "
                "error = predicted - observed (right; red over-, blue under-predicted).")
    return name


def _figures_html(figures: dict[str, Path], run_dir: Path, embed: bool) -> str:
    if not figures:
        return '<p class="note">No figures (the run folder has no tables to draw).</p>'
    items = []
    for name, path in figures.items():
        if embed:
            src = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
        else:
            src = path.resolve().relative_to(run_dir.resolve()).as_posix()
        items.append(f'<figure id="fig-{_esc(name)}"><img src="{_esc(src)}" alt="{_esc(name)}">'
                     f"<figcaption>{_esc(_caption(name))}</figcaption></figure>")
    return '<div class="figs">' + "\n".join(items) + "</div>"


def _protocol_html(metrics: dict[str, Any] | None) -> str:
    if not metrics or "protocol" not in metrics:
        return ""
    described = (metrics.get("config") or {}).get("description") if isinstance(metrics.get("config"), dict) else None
    if not described:  # metrics.json written before descriptions existed: rebuild from its config
        from urbanrep.evaluate.protocols import PROTOCOL_TEXT, EvalConfig

        proto, cfg = metrics["protocol"], metrics.get("config") if isinstance(metrics.get("config"), dict) else {}
        if proto in PROTOCOL_TEXT and cfg:
            described = PROTOCOL_TEXT[proto].format(
                folds=cfg.get("folds", "?"), repeats=len(cfg.get("seeds") or [0]),
                clip="are set to 0" if cfg.get("clip_negative") else "are kept")
        elif proto in PROTOCOL_TEXT:
            described = EvalConfig(protocol=proto).describe() + " (the protocol's defaults; metrics.json holds no config)"
    if not described:
        return ""
    probe = metrics.get("regressor")
    return (f"<p><b>How these numbers were made.</b> Probe: {_esc(probe or 'ridge')} regression from the embedding "
            f"to each target; {_esc(described)}. The probes never feed back into the model, and the model never saw "
            "a target.</p>")


def target_info(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Per-target ``definition``, ``unit`` and ``kind`` from ``run_dir/bundle/manifest.json`` (empty if none).

    A bundle's provenance may describe a target by a mapping (``definition``, ``unit``, ``kind``) or
    by its definition alone, a string (what most converters write); both are read.
    """
    manifest = run_dir / "bundle" / "manifest.json"
    try:
        info = json.loads(manifest.read_text(encoding="utf-8")).get("provenance", {}).get("targets", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return normalise_target_info(info)


def normalise_target_info(info: Any) -> dict[str, dict[str, Any]]:
    """``{target: {"definition": ..., ...}}`` from a provenance ``targets`` entry (mappings kept, a
    string taken as the definition, anything else dropped)."""
    if not isinstance(info, dict):
        return {}
    out: dict[str, dict[str, Any]] = {}
    for target, meta in info.items():
        if isinstance(meta, dict):
            out[str(target)] = meta
        elif isinstance(meta, str):
            out[str(target)] = {"definition": meta}
    return out


def _targets_html(predictions: pd.DataFrame | None, info: dict[str, dict[str, Any]]) -> str:
    """Definition, unit, counts and flags per target."""
    if predictions is None or predictions.empty:
        return ""
    from urbanrep.export.gis import predictions_wide

    wide = predictions_wide(predictions)
    rows, flags = [], []
    for target in [c[len("obs_"):] for c in wide.columns if c.startswith("obs_")]:
        obs = wide[f"obs_{target}"].to_numpy(dtype=np.float64)
        pred_long = predictions.loc[predictions["target"].astype(str) == target, "predicted"].to_numpy(np.float64)
        meta = info.get(target) or {}
        finite = obs[np.isfinite(obs)]
        is_count = meta.get("kind") == "count" or (
            "kind" not in meta and len(finite) > 0 and (finite >= 0).all() and np.allclose(finite, np.round(finite)))
        zeros = int((finite == 0).sum())
        negative = int((pred_long < 0).sum())
        rows.append([_esc(target), _esc(meta.get("definition", "not given by the bundle")),
                     _esc(meta.get("unit", "not given")), str(len(finite)), str(zeros),
                     f"{negative} of {len(pred_long)}" if is_count else "–"])
        if zeros:
            flags.append(f"{target}: {zeros} region(s) have the value 0 (a true zero or a missing value coded as 0 "
                         "by the source; they are kept in the evaluation).")
        if is_count and negative:
            flags.append(f"{target} is a count, but {negative} out-of-fold prediction(s) are negative (a linear "
                         "probe is not bounded; the 'paper' and peer protocols clip them to 0).")
    table = _table(["target", "definition", "unit", "regions", "zeros", "negative predictions"], rows, key_cols=3)
    flag_html = ("<ul>" + "".join(f'<li class="note">{_esc(f)}</li>' for f in flags) + "</ul>") if flags else ""
    return "<h3>Targets</h3>" + table + flag_html


def _read_table(path: Path) -> pd.DataFrame | None:
    if not path.exists():
        return None
    try:
        return pd.read_parquet(path)
    except Exception as exc:
        raise ExportError(f"cannot read {path}: {exc}; re-run the pipeline to rewrite it") from exc


def render_report(
    run_dir: str | Path,
    figures: dict[str, Path],
    regions: gpd.GeoDataFrame | None = None,
    title: str | None = None,
    embed_images: bool = True,
    targets: dict[str, dict[str, Any]] | None = None,
) -> str:
    """Build the report HTML of ``run_dir`` with the given figures (no file written).

    ``targets`` maps a target to its ``definition``, ``unit`` and ``kind`` (``"count"`` turns
    on the negative-prediction flag); default: the run's ``bundle/manifest.json`` provenance.
    """
    run_dir = Path(run_dir)
    metrics = _read_json(run_dir / "metrics.json")
    config = _read_json(run_dir / "config.json")
    predictions = _read_table(run_dir / "predictions.parquet")
    info = normalise_target_info(targets) if targets is not None else target_info(run_dir)
    interactive = '<p class="note">No region polygons were given: no interactive map.</p>'
    if regions is not None:
        from urbanrep.export.interactive import interactive_map_html

        interactive = interactive_map_html(regions, _read_table(run_dir / "embeddings.parquet"),
                                           _read_table(run_dir / "fusion_weights.parquet"), predictions)
    title = title or f"urbanrep run: {run_dir.resolve().name}"
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    maps_note = "" if regions is not None else (
        '<p class="note">No region polygons were given: maps are not drawn.</p>')
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_esc(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>{_esc(title)}</h1>
<p class="sub">Run folder <code>{_esc(run_dir.resolve())}</code> · report written {stamp} · urbanrep {__version__}</p>
<h2>Metrics</h2>
{_protocol_html(metrics)}
{_metrics_html(metrics)}
{_targets_html(predictions, info)}
<h2>Interactive map</h2>
{interactive}
<h2>Embedding and fusion</h2>
{_tables_html(run_dir, regions)}
<h2>Figures</h2>
{maps_note}
{_figures_html(figures, run_dir, embed_images)}
<h2>Run configuration</h2>
{_config_html(config)}
</body>
</html>
"""


def write_report(
    run_dir: str | Path,
    regions: gpd.GeoDataFrame | None = None,
    title: str | None = None,
    embed_images: bool = True,
    targets: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """Draw the run's figures and write a static ``run_dir/report.html`` atomically.

    Args:
        run_dir: Run folder (``metrics.json``, ``config.json``, ``embeddings.parquet``,
            ``fusion_weights.parquet``, ``predictions.parquet``, ``loss.csv``; each optional).
        regions: Region polygons (``CityBundle.regions``) for the maps; without them only the
            scatter plots and the loss curve are drawn.
        title: Page title; default ``"urbanrep run: <folder name>"``.
        embed_images: Embed the PNGs as base64 (a self-contained file, the default) or link
            them by relative path (``figures/<name>.png``).
        targets: Per target ``definition``, ``unit``, ``kind`` (see :func:`render_report`).

    Returns:
        Path of ``report.html``.
    """
    run_dir = Path(run_dir)
    figures = make_figures(run_dir, regions)
    path = run_dir / REPORT_NAME
    write_text_atomic(path, render_report(run_dir, figures, regions, title, embed_images, targets))
    log.info("wrote report %s (%d figures)", path, len(figures))
    return path
