"""An interactive region map for ``report.html``: inline SVG plus a few lines of inline script.

Hovering (or tapping) a region shows its id, observed targets, out-of-fold predictions and
errors, and its fusion weights; a menu recolours the map (embedding PCA as RGB, each target's
prediction or error, each modality's fusion weight). Everything is inside the page: no library,
no CDN, no network access, so the report works offline and when mailed. Opening the page with
``#region=<id>`` shows that region's panel, as a hover does.

Polygons are drawn in a metric CRS (the regions' UTM zone when they are in degrees), simplified
to about a thousandth of the city's extent. Cities with more than :data:`MAX_REGIONS` regions
get no interactive map (the page would grow too large); the static maps remain.
"""

from __future__ import annotations

import html
import json
import math
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from urbanrep.export.gis import join_regions, predictions_wide, region_table
from urbanrep.export.maps import embedding_rgb, metric_regions

#: Above this many regions the report holds no interactive map.
MAX_REGIONS = 5000
WIDTH = 640.0

_SCRIPT = """
(function(){
  var D = JSON.parse(document.getElementById('urbanrep-map-data').textContent);
  var svg = document.getElementById('urbanrep-map'), info = document.getElementById('urbanrep-map-info');
  var paths = svg.querySelectorAll('path[data-i]'), sel = document.getElementById('urbanrep-map-colour');
  var legend = document.getElementById('urbanrep-map-legend');
  function fmt(v){ if (v === null || v === undefined) return '–';
    var a = Math.abs(v); return (a >= 1e5 || (a > 0 && a < 1e-3)) ? v.toExponential(3) : (+v.toFixed(a >= 100 ? 1 : 3)).toString(); }
  function esc(s){ return String(s).replace(/[&<>"]/g, function(c){ return {'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]; }); }
  function show(i){
    var r = D.regions[i]; if (!r) return;
    var rows = '<tr><th colspan="4">region ' + esc(r.id) + '</th></tr>';
    if (D.targets.length) rows += '<tr><td class="k">target</td><td>observed</td><td>predicted</td><td>error</td></tr>';
    D.targets.forEach(function(t, k){ var o = r.obs[k], p = r.pred[k];
      rows += '<tr><td class="k">' + esc(t) + '</td><td>' + fmt(o) + '</td><td>' + fmt(p) + '</td><td>'
            + (o === null || p === null ? '–' : fmt(p - o)) + '</td></tr>'; });
    if (D.modalities.length) rows += '<tr><td class="k" colspan="4">fusion weights</td></tr>';
    D.modalities.forEach(function(m, k){ rows += '<tr><td class="k">' + esc(m) + '</td><td colspan="3">'
      + fmt(r.w[k]) + '</td></tr>'; });
    info.innerHTML = '<table>' + rows + '</table>';
    info.setAttribute('data-region', r.id);
    paths.forEach(function(p){ p.classList.toggle('hl', +p.getAttribute('data-i') === i); });
  }
  function colour(mode){
    var c = D.colours[mode]; if (!c) return;
    paths.forEach(function(p){ p.setAttribute('fill', c.fill[+p.getAttribute('data-i')]); });
    legend.textContent = c.legend;
  }
  paths.forEach(function(p){ var i = +p.getAttribute('data-i');
    p.addEventListener('mouseenter', function(){ show(i); });
    p.addEventListener('click', function(){ show(i); }); });
  sel.addEventListener('change', function(){ colour(sel.value); });
  colour(sel.value);
  var m = /region=([^&]+)/.exec(decodeURIComponent(location.hash || ''));
  if (m) { var k = D.regions.findIndex(function(r){ return String(r.id) === m[1]; }); if (k >= 0) show(k); }
  document.documentElement.setAttribute('data-map-ready', '1');
})();
"""

_CSS = """
.imap{display:flex;gap:16px;align-items:flex-start;flex-wrap:wrap}
.imap svg{border:1px solid #dde;background:#fafbfd;max-width:100%;height:auto}
.imap path{stroke:#fff;stroke-width:0.6;vector-effect:non-scaling-stroke;cursor:pointer}
.imap path.hl{stroke:#000;stroke-width:2}
.imap .panel{min-width:300px;font-size:0.9em}
#urbanrep-map-info table{margin-top:6px}
"""


def _hex(rgb: np.ndarray) -> list[str]:
    out = []
    for r, g, b in np.clip(rgb, 0, 1):
        out.append(f"#{int(round(r * 255)):02x}{int(round(g * 255)):02x}{int(round(b * 255)):02x}")
    return out


def _ramp(values: np.ndarray, cmap: str, lo: float, hi: float) -> list[str]:
    from matplotlib import colormaps

    span = hi - lo if hi > lo else 1.0
    rgba = colormaps[cmap](np.clip((values - lo) / span, 0, 1))
    fill = _hex(rgba[:, :3])
    return [f if np.isfinite(v) else "#d9d9d9" for f, v in zip(fill, values, strict=True)]


def _num(v: Any) -> float | None:
    f = float(v)
    return None if not math.isfinite(f) else f


def _path(geom: Any, tx: Any) -> str:
    parts = []
    polys = getattr(geom, "geoms", [geom])
    for poly in polys:
        if poly.is_empty or poly.geom_type != "Polygon":
            continue
        for ring in [poly.exterior, *poly.interiors]:
            xy = tx(np.asarray(ring.coords)[:, :2])
            parts.append("M" + "L".join(f"{x:.1f},{y:.1f}" for x, y in xy) + "Z")
    return "".join(parts)


def interactive_map_html(regions: gpd.GeoDataFrame, embeddings: pd.DataFrame | None = None,
                         fusion_weights: pd.DataFrame | None = None,
                         predictions: pd.DataFrame | None = None) -> str:
    """The interactive map block (HTML with inline SVG, JSON and script), or a note when skipped.

    Args:
        regions: Region polygons with ``region_id`` (any CRS).
        embeddings: region_id-indexed embedding ``[N, D]`` (colours the default view).
        fusion_weights: region_id-indexed weights ``[N, M]``.
        predictions: Long out-of-fold predictions (repeats are averaged).
    """
    if len(regions) > MAX_REGIONS:
        return (f'<p class="note">No interactive map: {len(regions)} regions is more than {MAX_REGIONS}; '
                "use the GIS files in gis/ in a desktop GIS.</p>")
    gdf = metric_regions(regions[["region_id", "geometry"]].reset_index(drop=True))
    minx, miny, maxx, maxy = gdf.total_bounds
    extent = max(maxx - minx, maxy - miny) or 1.0
    scale = WIDTH / (maxx - minx if maxx > minx else 1.0)
    height = (maxy - miny) * scale
    if height > 900:  # tall cities: fit the height instead
        scale, height = 900 / (maxy - miny), 900.0
    width = (maxx - minx) * scale

    def tx(xy: np.ndarray) -> np.ndarray:
        return np.c_[(xy[:, 0] - minx) * scale, (maxy - xy[:, 1]) * scale]

    geoms = shapely.simplify(gdf.geometry.to_numpy(), extent / 1000, preserve_topology=True)
    ids = gdf["region_id"].tolist()
    n = len(ids)

    colours: dict[str, dict[str, Any]] = {}
    labels: list[tuple[str, str]] = []
    if embeddings is not None:
        rgb = join_regions(regions, embedding_rgb(embeddings), "embeddings")[["r", "g", "b"]].to_numpy(float)
        fill = _hex(np.nan_to_num(rgb, nan=0.85))
        colours["embedding"] = {"fill": fill, "legend": "embedding: PCA components 1-3 as RGB (similar colour = "
                                                        "similar embedding)"}
        labels.append(("embedding", "embedding (PCA as RGB)"))
    targets: list[str] = []
    obs = pred = np.full((n, 0), np.nan)
    if predictions is not None and len(predictions):
        wide = join_regions(regions, predictions_wide(predictions), "predictions")
        targets = [c[len("obs_"):] for c in wide.columns if c.startswith("obs_")]
        obs = wide[[f"obs_{t}" for t in targets]].to_numpy(float)
        pred = wide[[f"pred_{t}" for t in targets]].to_numpy(float)
        for k, t in enumerate(targets):
            lo, hi = float(np.nanmin(obs[:, k])), float(np.nanmax(obs[:, k]))
            colours[f"pred:{t}"] = {"fill": _ramp(pred[:, k], "viridis", lo, hi),
                                    "legend": f"{t}: out-of-fold prediction, viridis from {lo:.4g} to {hi:.4g}"}
            err = pred[:, k] - obs[:, k]
            bound = float(np.nanmax(np.abs(err))) if np.isfinite(err).any() else 1.0
            colours[f"err:{t}"] = {"fill": _ramp(err, "RdBu_r", -bound, bound),
                                   "legend": f"{t}: error, blue -{bound:.4g} (under) … red +{bound:.4g} (over)"}
            labels += [(f"pred:{t}", f"{t}: prediction"), (f"err:{t}", f"{t}: error")]
    modalities: list[str] = []
    weights = np.full((n, 0), np.nan)
    if fusion_weights is not None:
        w = join_regions(regions, region_table(fusion_weights, "fusion_weights"), "fusion_weights")
        modalities = [c for c in w.columns if c not in ("region_id", "geometry")]
        weights = w[modalities].apply(pd.to_numeric, errors="coerce").to_numpy(float)
        for k, m in enumerate(modalities):
            lo, hi = float(np.nanmin(weights[:, k])), float(np.nanmax(weights[:, k]))
            colours[f"w:{m}"] = {"fill": _ramp(weights[:, k], "viridis", lo, hi),
                                 "legend": f"fusion weight of {m}, viridis from {lo:.3f} to {hi:.3f}"}
            labels.append((f"w:{m}", f"fusion weight: {m}"))
    if not colours:
        colours["plain"] = {"fill": ["#9ecae1"] * n, "legend": "regions"}
        labels.append(("plain", "regions"))

    data = {
        "targets": targets, "modalities": modalities, "colours": colours,
        "regions": [{"id": rid if isinstance(rid, int | str) else str(rid),
                     "obs": [_num(v) for v in obs[i]], "pred": [_num(v) for v in pred[i]],
                     "w": [_num(v) for v in weights[i]]} for i, rid in enumerate(ids)],
    }
    paths = "\n".join(f'<path data-i="{i}" d="{_path(g, tx)}"><title>region {html.escape(str(rid))}</title></path>'
                      for i, (g, rid) in enumerate(zip(geoms, ids, strict=True)))
    options = "".join(f'<option value="{html.escape(v)}">{html.escape(t)}</option>' for v, t in labels)
    blob = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    crs = gdf.crs.name if gdf.crs is not None else "unknown CRS"
    return f"""<style>{_CSS}</style>
<div class="imap">
<svg id="urbanrep-map" viewBox="0 0 {width:.0f} {height:.0f}" width="{width:.0f}" height="{height:.0f}"
 role="img" aria-label="interactive region map">
{paths}
</svg>
<div class="panel">
<label>Colour by <select id="urbanrep-map-colour">{options}</select></label>
<p id="urbanrep-map-legend" class="sub"></p>
<p class="sub">Hover or tap a region. Drawn in {html.escape(crs)}; shapes simplified for display.</p>
<div id="urbanrep-map-info"><p class="sub">No region selected.</p></div>
</div>
</div>
<script type="application/json" id="urbanrep-map-data">{blob}</script>
<script>{_SCRIPT}</script>"""
