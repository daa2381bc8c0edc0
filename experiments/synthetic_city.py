"""A seeded generator of synthetic cities in the real bundle format (benchmarks and tests).

The city is a square of side ``sqrt(num_regions) * region_size`` metres in a UTM CRS. Activity
follows a mixture of Gaussian hotspots with log-normal weights (a few dominant centres, a long
tail), plus a uniform background; some points fall outside the city (and are reported by the
ETL as outside every region), as in real extracts.

* regions: Voronoi cells of seeds drawn from the activity mixture (small downtown cells, large
  suburban ones), or a square grid;
* POIs: points from the mixture, the category drawn from the hotspot's own Dirichlet mix;
* trips: origin hotspot by weight, destination hotspot by a gravity model
  (weight x exp(-distance / (0.3 L))), morning / evening peaks in the pickup time;
* land use: Voronoi parcels with a class that depends on the distance to the centre;
* roads: a street grid split at intersections (like OSM edges), some segments removed;
* street view / remote sensing: points or tile squares with a ``feature`` vector that depends on
  the nearest hotspot.

Everything is vectorised (``numpy.random.default_rng(seed)``); the same arguments give the same
city. Nothing here is real data: use it for scale and behaviour, never for accuracy.

Two outputs:

* :func:`make_city` builds the whole city in memory (shapely geometries), for tests and
  benchmarks up to a few million points;
* :func:`write_city_parquet` streams POIs and trips straight to Parquet (float ``x``/``y``
  coordinate columns, row groups of ``row_group_size`` rows, each chunk drawn from its own
  seeded generator), never holding the points as geometries: 1M regions with 50M POIs and 50M
  trips take a few GB. Only regions, POIs and trips are written; the result is a bundle whose
  point layers :func:`urbanrep.bundle.read_bundle` keeps on disk.

Nothing builds an ``N x N`` (or hotspots x hotspots) array above :data:`DENSE_GRAVITY_MAX`
hotspots: destinations are then drawn from the same gravity model by rejection sampling.

    python -m experiments.synthetic_city --regions 1000 --pois 100000 --trips 100000 --out /tmp/city
    python -m experiments.synthetic_city --regions 1000000 --pois 50000000 --trips 50000000 \
        --parquet --out /tmp/city_1m
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
from scipy.spatial import cKDTree

from urbanrep.bundle import CityBundle

#: Up to this many hotspots the gravity model's destination probabilities are a dense
#: hotspots x hotspots matrix (the generator's original sampler, kept so that small cities are
#: unchanged); above it destinations are drawn by rejection sampling (same distribution, no
#: quadratic memory: 20k hotspots at 1M regions would need 3.2 GB per matrix).
DENSE_GRAVITY_MAX = 4096

CRS = "EPSG:32633"
_ORIGIN = np.array([400_000.0, 5_000_000.0])  # a UTM-plausible offset (metres)


@dataclass(frozen=True)
class SyntheticCityConfig:
    """Size and shape of a synthetic city.

    Attributes:
        num_regions: Regions (Voronoi cells or grid squares).
        num_pois: POI points.
        num_trips: Trips (origin/destination points, pickup time).
        num_landuse: Land-use parcels (0 = no land-use layer).
        road_spacing: Street-grid spacing in metres (0 = no roads).
        num_street_view: Street-view points with feature vectors (0 = none).
        remote_sensing_tiles: Side of the remote-sensing tile grid (0 = none).
        tessellation: ``"voronoi"`` or ``"square"``.
        num_categories: POI categories.
        feature_dim: Dimension of street-view / remote-sensing feature vectors.
        region_size: Mean region width in metres.
        seed: Seed of everything.
    """

    num_regions: int = 1000
    num_pois: int = 0
    num_trips: int = 0
    num_landuse: int = 0
    road_spacing: float = 0.0
    num_street_view: int = 0
    remote_sensing_tiles: int = 0
    tessellation: str = "voronoi"
    num_categories: int = 20
    feature_dim: int = 16
    region_size: float = 300.0
    seed: int = 0


class _Activity:
    """The hotspot mixture every layer samples from."""

    def __init__(self, rng: np.random.Generator, side: float, num_hotspots: int) -> None:
        self.side = side
        self.rng = rng
        self.xy = rng.uniform(0.1 * side, 0.9 * side, size=(num_hotspots, 2))
        w = rng.lognormal(0.0, 1.2, num_hotspots)
        self.w = w / w.sum()
        self.scale = rng.uniform(0.01, 0.06, num_hotspots) * side

    def sample(self, m: int, background: float = 0.15, rng: np.random.Generator | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """``m`` points (``[m, 2]``) and their hotspot (-1 = uniform background)."""
        rng = self.rng if rng is None else rng
        hot = rng.choice(len(self.w), size=m, p=self.w)
        xy = self.xy[hot] + rng.normal(size=(m, 2)) * self.scale[hot, None]
        bg = rng.random(m) < background
        xy[bg] = rng.uniform(0, self.side, size=(int(bg.sum()), 2))
        hot[bg] = -1
        return xy, hot


def _categorical_rows(rng: np.random.Generator, probs: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Draw one category per entry of ``rows`` from ``probs[rows]`` (vectorised inverse CDF)."""
    h, c = probs.shape
    cdf = np.cumsum(probs, axis=1)
    cdf[:, -1] = 1.0
    flat = (cdf + np.arange(h)[:, None]).ravel()
    u = rng.random(len(rows)) * (1 - 1e-12)
    pos = np.searchsorted(flat, rows + u, side="right")
    return np.minimum(pos - rows * c, c - 1)


class _Gravity:
    """Destination hotspot of a trip: ``P(j | i) ~ w_j exp(-d_ij / (0.3 L))`` (the gravity model)."""

    def __init__(self, act: _Activity) -> None:
        self.act = act
        self.scale = 0.3 * act.side
        self.trans: np.ndarray | None = None
        if len(act.w) <= DENSE_GRAVITY_MAX:
            d = np.linalg.norm(act.xy[:, None] - act.xy[None], axis=2)
            trans = act.w[None, :] * np.exp(-d / self.scale)
            self.trans = trans / trans.sum(axis=1, keepdims=True)

    def sample(self, rng: np.random.Generator, origin: np.ndarray) -> np.ndarray:
        """One destination hotspot per origin hotspot (``[m]`` int64)."""
        if self.trans is not None:
            return _categorical_rows(rng, self.trans, origin)
        # Rejection sampling: propose j ~ w, accept with exp(-d_ij / scale) <= 1. The accepted
        # draws follow w_j exp(-d_ij / scale) exactly; about 4 proposals per trip.
        act = self.act
        out = np.empty(len(origin), dtype=np.int64)
        todo = np.arange(len(origin))
        while len(todo):
            j = rng.choice(len(act.w), size=len(todo), p=act.w)
            d = np.linalg.norm(act.xy[origin[todo]] - act.xy[j], axis=1)
            ok = rng.random(len(todo)) < np.exp(-d / self.scale)
            out[todo[ok]] = j[ok]
            todo = todo[~ok]
        return out


def _poi_mix(rng: np.random.Generator, act: _Activity, c: int) -> np.ndarray:
    """Category probabilities per hotspot (``[H + 1, C]``; last row: background)."""
    base = 1.0 / np.arange(1, c + 1) ** 1.1  # Zipf-like global popularity
    mix = rng.dirichlet(np.full(c, 0.3), size=len(act.w)) * 0.7 + 0.3 * base / base.sum()
    return np.vstack([mix, base / base.sum()])


def _trip_draw(rng: np.random.Generator, act: _Activity, gravity: _Gravity, m: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``m`` trips: origin ``[m, 2]``, destination ``[m, 2]`` (city frame) and pickup time ``[m]``."""
    o_xy, o_hot = act.sample(m, background=0.1, rng=rng)
    d_hot = gravity.sample(rng, np.where(o_hot >= 0, o_hot, rng.choice(len(act.w), size=m, p=act.w)))
    d_xy = act.xy[d_hot] + rng.normal(size=(m, 2)) * act.scale[d_hot, None]
    peak = rng.random(m)
    hour = np.where(peak < 0.35, rng.normal(8.5, 1.2, m),
                    np.where(peak < 0.7, rng.normal(18.0, 1.5, m), rng.uniform(0, 24, m))) % 24
    t = (np.datetime64("2024-03-01T00:00:00", "s") + rng.integers(0, 30, m).astype("timedelta64[D]")
         + (hour * 3600).astype("timedelta64[s]"))
    return o_xy, d_xy, t


def _voronoi(seeds: np.ndarray, side: float) -> np.ndarray:
    frame = shapely.box(0, 0, side, side)
    cells = shapely.get_parts(shapely.voronoi_polygons(shapely.multipoints(seeds), extend_to=frame))
    cells = shapely.intersection(cells, frame)
    cells = cells[~shapely.is_empty(cells)]
    # Stable order: by centroid (y, x), so ids do not depend on GEOS output order.
    c = shapely.get_coordinates(shapely.centroid(cells))
    return cells[np.lexsort((c[:, 0], c[:, 1]))]


def _square(n: int, side: float) -> np.ndarray:
    g = int(np.ceil(np.sqrt(n)))
    step = side / g
    i, j = np.meshgrid(np.arange(g), np.arange(g))
    x0, y0 = i.ravel() * step, j.ravel() * step
    return shapely.box(x0, y0, x0 + step, y0 + step)[:n]


def _points(xy: np.ndarray) -> np.ndarray:
    return shapely.points(xy + _ORIGIN)


def _translate(geoms: np.ndarray) -> np.ndarray:
    return shapely.transform(geoms, lambda c: c + _ORIGIN)


def _regions(config: SyntheticCityConfig) -> tuple[np.random.Generator, float, _Activity, gpd.GeoDataFrame]:
    """The generator, city side, activity mixture and regions (the first draws of every city)."""
    rng = np.random.default_rng(config.seed)
    n = config.num_regions
    side = float(np.sqrt(n) * config.region_size)
    act = _Activity(rng, side, max(8, n // 50))
    if config.tessellation == "voronoi":
        seeds, _ = act.sample(n, background=0.5)
        seeds = np.clip(seeds, 0, side)
        cells = _voronoi(seeds, side)
    elif config.tessellation == "square":
        cells = _square(n, side)
    else:
        raise ValueError(f"unknown tessellation {config.tessellation!r}; use 'voronoi' or 'square'")
    regions = gpd.GeoDataFrame({"region_id": np.arange(len(cells), dtype=np.int64)},
                               geometry=_translate(cells), crs=CRS)
    return rng, side, act, regions


def make_city(config: SyntheticCityConfig) -> CityBundle:
    """Generate a synthetic city bundle (not validated; pass it to ``validate_bundle`` if needed)."""
    rng, side, act, regions = _regions(config)
    n = config.num_regions
    layers: dict[str, object] = {}

    if config.num_pois:
        c = config.num_categories
        probs = _poi_mix(rng, act, c)
        xy, hot = act.sample(config.num_pois)
        cat = _categorical_rows(rng, probs, np.where(hot >= 0, hot, len(act.w)))
        names = np.array([f"cat_{i:02d}" for i in range(c)])
        layers["pois"] = gpd.GeoDataFrame({"category": names[cat]}, geometry=_points(xy), crs=CRS)

    if config.num_trips:
        m = config.num_trips
        o_xy, d_xy, t = _trip_draw(rng, act, _Gravity(act), m)
        trips = gpd.GeoDataFrame({"time": pd.to_datetime(t), "count": np.ones(m, dtype=np.int64)},
                                 geometry=_points(o_xy), crs=CRS).rename_geometry("origin")
        trips["destination"] = gpd.GeoSeries(_points(d_xy), crs=CRS)
        layers["trips"] = trips

    if config.num_landuse:
        seeds, _ = act.sample(config.num_landuse, background=0.5)
        parcels = _voronoi(np.clip(seeds, 0, side), side)
        cen = shapely.get_coordinates(shapely.centroid(parcels))
        r = np.linalg.norm(cen - side / 2, axis=1) / (side / 2)
        classes = np.array(["commercial", "residential", "industrial", "green", "water", "transport"])
        probs = np.stack([np.clip(1 - r, 0.05, None), np.full_like(r, 0.8), r * 0.4, r * 0.3 + 0.1,
                          np.full_like(r, 0.05), np.full_like(r, 0.15)], axis=1)
        probs /= probs.sum(axis=1, keepdims=True)
        cls = _categorical_rows(rng, probs, np.arange(len(parcels)))
        layers["landuse"] = gpd.GeoDataFrame({"class": classes[cls]}, geometry=_translate(parcels), crs=CRS)

    if config.road_spacing:
        g = int(side // config.road_spacing) + 1
        ticks = np.arange(g) * config.road_spacing
        ga, gb = np.meshgrid(np.arange(g - 1), np.arange(g))
        a, b = ga.ravel(), gb.ravel()
        horiz = np.stack([np.stack([ticks[a], ticks[b]], 1), np.stack([ticks[a + 1], ticks[b]], 1)], axis=1)
        vert = np.stack([np.stack([ticks[b], ticks[a]], 1), np.stack([ticks[b], ticks[a + 1]], 1)], axis=1)
        coords = np.concatenate([horiz, vert])
        line_no = np.concatenate([b, b])
        keep = rng.random(len(coords)) > 0.08
        cls = np.where(line_no % 10 == 0, "primary", np.where(line_no % 5 == 0, "secondary", "residential"))
        lines = shapely.linestrings(coords[keep] + _ORIGIN)
        layers["roads"] = gpd.GeoDataFrame({"class": cls[keep]}, geometry=lines, crs=CRS)

    if config.num_street_view or config.remote_sensing_tiles:
        centres = rng.normal(size=(len(act.w) + 1, config.feature_dim))
    if config.num_street_view:
        xy, hot = act.sample(config.num_street_view)
        f = centres[np.where(hot >= 0, hot, len(act.w))] + 0.5 * rng.normal(size=(len(xy), config.feature_dim))
        layers["street_view"] = gpd.GeoDataFrame({"feature": list(f.astype(np.float32))}, geometry=_points(xy),
                                                 crs=CRS)
    if config.remote_sensing_tiles:
        nt = config.remote_sensing_tiles
        step = side / nt
        i, j = np.meshgrid(np.arange(nt), np.arange(nt))
        x0, y0 = i.ravel() * step, j.ravel() * step
        tiles = shapely.box(x0, y0, x0 + step, y0 + step)
        cen = np.stack([x0 + step / 2, y0 + step / 2], axis=1)
        near = cKDTree(act.xy).query(cen)[1]  # nearest hotspot, without a tiles x hotspots matrix
        f = centres[near] + 0.3 * rng.normal(size=(len(cen), config.feature_dim))
        layers["remote_sensing"] = gpd.GeoDataFrame({"feature": list(f.astype(np.float32))},
                                                    geometry=_translate(tiles), crs=CRS)

    return CityBundle(name=f"synthetic_{n}", regions=regions, **layers,  # type: ignore[arg-type]
                      provenance={"generator": "experiments/synthetic_city.py", "config": config.__dict__})


def _chunk_rng(seed: int, layer: int, chunk: int) -> np.random.Generator:
    """The generator of one chunk of one layer (independent streams, same city every run)."""
    return np.random.default_rng([seed, layer, chunk])


def _stream(path: Path, schema: pa.Schema, total: int, row_group_size: int, draw: Any) -> int:
    """Write ``total`` rows to ``path``, ``draw(chunk_index, rows) -> pa.Table`` per row group."""
    written = 0
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for k, start in enumerate(range(0, total, row_group_size)):
            table = draw(k, min(row_group_size, total - start))
            writer.write_table(table, row_group_size=len(table))
            written += len(table)
    return written


def write_city_parquet(config: SyntheticCityConfig, out: str | Path, row_group_size: int = 2_000_000
                       ) -> dict[str, Any]:
    """Write a city's regions, POIs and trips as a bundle whose point layers stay on disk.

    POIs (``x``, ``y``, ``category``) and trips (``origin_x``, ``origin_y``, ``destination_x``,
    ``destination_y``, ``time``, ``count``) are drawn chunk by chunk (one row group each, from
    the generator seeded with ``(seed, layer, chunk)``) and appended to Parquet; no point is
    ever a shapely geometry, and memory is one chunk plus the regions. The statistical design is
    :func:`make_city`'s (same hotspot mixture, category mixes, gravity model and time profile;
    the draws differ). Land use, roads and imagery are not written.

    Args:
        config: City size and seed (``num_landuse``, ``road_spacing``, ``num_street_view`` and
            ``remote_sensing_tiles`` must be 0).
        out: Bundle folder (replaced atomically).
        row_group_size: Rows per chunk / row group.

    Returns:
        Seconds per step (``regions_s``, ``pois_s``, ``trips_s``, ``write_s``) and the counts.
    """
    from urbanrep.bundle import write_bundle
    from urbanrep.bundle.partitioned import open_parquet_layer

    if config.num_landuse or config.road_spacing or config.num_street_view or config.remote_sensing_tiles:
        raise ValueError("write_city_parquet writes regions, POIs and trips only; set the other layers to 0 "
                         "or use make_city")
    out = Path(out)
    stage = out.with_name(f".{out.name}.staging")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    timings: dict[str, Any] = {}
    try:
        t0 = time.perf_counter()
        rng, side, act, regions = _regions(config)
        timings["regions_s"] = round(time.perf_counter() - t0, 2)
        layers: dict[str, Any] = {}
        if config.num_pois:
            t0 = time.perf_counter()
            c = config.num_categories
            probs = _poi_mix(rng, act, c)
            names = pa.array([f"cat_{i:02d}" for i in range(c)])
            schema = pa.schema([("x", pa.float64()), ("y", pa.float64()),
                                ("category", pa.dictionary(pa.int32(), pa.string()))])

            def draw_pois(k: int, m: int) -> pa.Table:
                r = _chunk_rng(config.seed, 1, k)
                xy, hot = act.sample(m, rng=r)
                cat = _categorical_rows(r, probs, np.where(hot >= 0, hot, len(act.w)))
                xy = xy + _ORIGIN
                return pa.table({"x": xy[:, 0], "y": xy[:, 1],
                                 "category": pa.DictionaryArray.from_arrays(cat.astype(np.int32), names)},
                                schema=schema)

            _stream(stage / "pois.parquet", schema, config.num_pois, row_group_size, draw_pois)
            layers["pois"] = open_parquet_layer(stage / "pois.parquet", "pois", crs=CRS)
            timings["pois_s"] = round(time.perf_counter() - t0, 2)
        if config.num_trips:
            t0 = time.perf_counter()
            gravity = _Gravity(act)
            schema = pa.schema([(f"{end}_{a}", pa.float64()) for end in ("origin", "destination") for a in "xy"]
                               + [("time", pa.timestamp("s")), ("count", pa.int64())])

            def draw_trips(k: int, m: int) -> pa.Table:
                r = _chunk_rng(config.seed, 2, k)
                o_xy, d_xy, t = _trip_draw(r, act, gravity, m)
                o_xy, d_xy = o_xy + _ORIGIN, d_xy + _ORIGIN
                return pa.table({"origin_x": o_xy[:, 0], "origin_y": o_xy[:, 1], "destination_x": d_xy[:, 0],
                                 "destination_y": d_xy[:, 1], "time": t, "count": np.ones(m, dtype=np.int64)},
                                schema=schema)

            _stream(stage / "trips.parquet", schema, config.num_trips, row_group_size, draw_trips)
            layers["trips"] = open_parquet_layer(stage / "trips.parquet", "trips", crs=CRS)
            timings["trips_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        provenance = {"generator": "experiments/synthetic_city.py (write_city_parquet)",
                      "config": json.loads(json.dumps(config.__dict__)), "row_group_size": row_group_size}
        write_bundle(CityBundle(name=f"synthetic_{config.num_regions}", regions=regions, provenance=provenance,
                                **layers), out)
        timings["write_s"] = round(time.perf_counter() - t0, 2)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    timings.update(regions=len(regions), pois=config.num_pois, trips=config.num_trips)
    return timings


def main(argv: list[str] | None = None) -> None:
    """Write a synthetic city bundle (``--out``)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--regions", type=int, default=1000)
    p.add_argument("--pois", type=int, default=0)
    p.add_argument("--trips", type=int, default=0)
    p.add_argument("--landuse", type=int, default=0)
    p.add_argument("--road-spacing", type=float, default=0.0)
    p.add_argument("--street-view", type=int, default=0)
    p.add_argument("--tessellation", default="voronoi", choices=["voronoi", "square"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--parquet", action="store_true",
                   help="stream POIs and trips straight to Parquet (x/y columns, row groups; regions, POIs and "
                        "trips only): for cities larger than memory")
    p.add_argument("--row-group-size", type=int, default=2_000_000)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    from urbanrep.bundle import write_bundle

    if a.parquet:
        t0 = time.perf_counter()
        timings = write_city_parquet(SyntheticCityConfig(a.regions, a.pois, a.trips, tessellation=a.tessellation,
                                                         seed=a.seed), a.out, a.row_group_size)
        timings["total_s"] = round(time.perf_counter() - t0, 2)
        for line in Path("/proc/self/status").read_text().splitlines() if Path("/proc/self/status").exists() else []:
            if line.startswith("VmHWM:"):
                timings["peak_rss_mb"] = round(int(line.split()[1]) / 1024, 1)
        print("GENERATED " + json.dumps(timings), flush=True)
        return

    bundle = make_city(SyntheticCityConfig(a.regions, a.pois, a.trips, a.landuse, a.road_spacing, a.street_view,
                                           tessellation=a.tessellation, seed=a.seed))
    report = write_bundle(bundle, a.out)
    print(bundle.summary_line())
    for line in report.lines():
        print(" ", line)


if __name__ == "__main__":
    main()
