"""São Paulo: 323 H3 (res. 9) hexagons with OSM roads and a GTFS transit feed (r5py sample data).

Source folder layout (``<data root>/sao_paulo``)::

    spo_hexgrid_EPSG32723.gpkg.zip   zipped GeoPackage of the hexagons (id = H3 index), EPSG:32723
    spo_hexgrid.csv                  id, lon, lat, population, jobs, schools
    spo_osm.pbf                      OSM extract filtered to the road network (ODbL)
    spo_gtfs.zip                     SPTrans / Metrô / CPTM GTFS feed (frequency based)

``region_id`` is the hexagon ``id`` (H3 index string). Targets ``population``, ``jobs`` and
``schools`` come from ``spo_hexgrid.csv`` (zeros are observed counts and are kept).

Layers:

* ``roads`` - ``highway=*`` ways of the pbf (see :mod:`urbanrep.osm`), ``class`` = the road
  class of the shipped vocabulary ``urbanrep-osm`` (the bundle fixes its road columns to that
  vocabulary, like every city prepared with ``urbanrep prepare osm``). The extract also
  holds 28 POI-tagged objects (fuel stations, malls, parking...), incidental to a road-only
  extract; they are not a POI census and no ``pois`` layer is made (the count is in the
  provenance).
* ``trips`` - the transit feed as a mobility layer. Each GTFS trip is a stop sequence
  (``stop_times.txt``); every pair of consecutive stops becomes one row with ``origin`` /
  ``destination`` = the two stop points. When ``frequencies.txt`` lists the trip, there is one
  row per frequency window, ``count`` = the number of runs the window implies
  (``ceil((end_time - start_time) / headway_secs)``) and ``time`` = the departure from the
  origin stop of the window's first run (window start + the stop's offset in the template
  trip); otherwise ``count`` = 1 and ``time`` = the scheduled departure. Times are local
  service times placed on the fixed reference date :data:`REFERENCE_DATE` (a Wednesday inside
  the calendar; times past 24:00 fall on the next day). Only trips whose ``calendar.txt``
  service runs on that date are kept (``calendar_dates.txt`` exceptions are not applied).
  These are **vehicle runs between stops, not passenger flows**; most stops lie outside the
  hexagons (the lines run far beyond the study area) and are ignored by region aggregation.
"""

from __future__ import annotations

import io
import logging
import zipfile
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd

from urbanrep.bundle import CityBundle
from urbanrep.converters._common import (
    long_targets,
    read_table,
    read_vector,
    require_columns,
    restrict_to_regions,
)
from urbanrep.errors import BundleError
from urbanrep.osm import read_osm
from urbanrep.vocabulary import load_vocabulary

log = logging.getLogger(__name__)

NAME = "sao_paulo"
VOCABULARY = "urbanrep-osm/1"
HEX_ZIP = "spo_hexgrid_EPSG32723.gpkg.zip"
HEX_GPKG = "spo_hexgrid_EPSG32723.gpkg"
HEX_CSV = "spo_hexgrid.csv"
PBF = "spo_osm.pbf"
GTFS = "spo_gtfs.zip"
TARGETS = {"population": "population", "jobs": "jobs", "schools": "schools"}
#: Service day the GTFS times are placed on (a Wednesday inside the feed's calendar).
REFERENCE_DATE = pd.Timestamp("2020-03-04")
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
PROVENANCE_BASE: dict[str, Any] = {
    "description": "São Paulo city-centre H3 hexagons (r5py sample data) with OSM roads and GTFS transit",
    "sources": ["r5py sample data (github r5py/r5py): hexgrid, spo_osm.pbf, spo_gtfs.zip",
                "OpenStreetMap", "SPTrans GTFS feed (Metrô, CPTM, buses)"],
    "licences": {"OpenStreetMap": "ODbL 1.0, (c) OpenStreetMap contributors",
                 "SPTrans GTFS": "published for open use without a named licence",
                 "r5py sample data": "distributed with r5py (MIT) for testing"},
    "targets": {"population": "residents per hexagon", "jobs": "jobs per hexagon",
                "schools": "schools per hexagon"},
    "trips": "GTFS vehicle runs between consecutive stops (not passenger flows); count = runs implied by "
             "frequencies.txt (ceil((end-start)/headway)) or 1; time = departure at the origin stop on the "
             f"reference date {REFERENCE_DATE.date()} (local service time)",
}


def read_regions(src: Path) -> gpd.GeoDataFrame:
    """The hexagons (``region_id`` = H3 index) from the zipped GeoPackage."""
    hexes = read_vector(f"zip://{src / HEX_ZIP}!{HEX_GPKG}")
    require_columns(hexes, ["id"], str(src / HEX_ZIP))
    return gpd.GeoDataFrame({"region_id": hexes["id"].astype(str).to_numpy()},
                            geometry=hexes.geometry.to_numpy(), crs=hexes.crs)


def _gtfs_table(zf: zipfile.ZipFile, name: str, columns: list[str], path: Path) -> pd.DataFrame | None:
    if name not in zf.namelist():
        return None
    try:
        df = pd.read_csv(io.BytesIO(zf.read(name)), dtype=str, keep_default_na=False)
    except Exception as exc:
        raise BundleError(f"cannot read {name} in {path}: {exc}") from exc
    require_columns(df, columns, f"{path}:{name}")
    return df


def _seconds(times: pd.Series) -> np.ndarray:
    """GTFS ``HH:MM:SS`` (hours may exceed 23) to seconds; blank -> NaN."""
    parts = times.str.strip().str.split(":", expand=True)
    if parts.shape[1] != 3:
        bad = times[times.str.strip() != ""]
        if len(bad) == 0:
            return np.full(len(times), np.nan)
        raise BundleError(f"GTFS time values are not HH:MM:SS (e.g. {bad.iloc[0]!r})")
    nums = parts.apply(pd.to_numeric, errors="coerce")
    return (nums[0] * 3600 + nums[1] * 60 + nums[2]).to_numpy(dtype=np.float64)


def read_transit_trips(path: Path, date: pd.Timestamp = REFERENCE_DATE) -> tuple[gpd.GeoDataFrame, dict[str, int]]:
    """Stop-to-stop vehicle runs of a GTFS feed on ``date`` (see the module docstring).

    Returns:
        ``(trips, counts)``: the trips layer (EPSG:4326; ``origin``, ``destination``, ``time``,
        ``count``, ``route_id``, ``trip_id``, ``route_type``) and counts for provenance.
    """
    if not path.exists():
        raise BundleError(f"missing GTFS feed {path}; is the data root right (--data-root / URBANREP_DATA)?")
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise BundleError(f"{path} is not a zip file (a GTFS feed is a zip of .txt tables)") from exc
    with zf:
        stops = _gtfs_table(zf, "stops.txt", ["stop_id", "stop_lat", "stop_lon"], path)
        stop_times = _gtfs_table(zf, "stop_times.txt",
                                 ["trip_id", "arrival_time", "departure_time", "stop_id", "stop_sequence"], path)
        gtrips = _gtfs_table(zf, "trips.txt", ["route_id", "service_id", "trip_id"], path)
        routes = _gtfs_table(zf, "routes.txt", ["route_id", "route_type"], path)
        calendar = _gtfs_table(zf, "calendar.txt", ["service_id", *WEEKDAYS, "start_date", "end_date"], path)
        freqs = _gtfs_table(zf, "frequencies.txt", ["trip_id", "start_time", "end_time", "headway_secs"], path)
    if stops is None or stop_times is None or gtrips is None:
        raise BundleError(f"{path}: a GTFS feed needs stops.txt, stop_times.txt and trips.txt")
    counts: dict[str, int] = {"gtfs_trips": len(gtrips)}

    if calendar is not None:
        day = WEEKDAYS[date.day_of_week]
        ymd = int(date.strftime("%Y%m%d"))
        runs = (calendar[day] == "1") & (pd.to_numeric(calendar["start_date"]) <= ymd) & (
            pd.to_numeric(calendar["end_date"]) >= ymd)
        active = set(calendar.loc[runs, "service_id"])
        keep = gtrips["service_id"].isin(active)
        counts["gtfs_trips_not_running_on_reference_date"] = int((~keep).sum())
        gtrips = gtrips.loc[keep]

    st = stop_times[stop_times["trip_id"].isin(gtrips["trip_id"])].copy()
    st["seq"] = pd.to_numeric(st["stop_sequence"], errors="coerce")
    dep = _seconds(st["departure_time"])
    arr = _seconds(st["arrival_time"])
    st["t"] = np.where(np.isnan(dep), arr, dep)
    st = st.sort_values(["trip_id", "seq"], kind="stable")
    if st["t"].isna().any():
        # Non-timepoint stops may have blank times: interpolate within each trip by stop order.
        st["t"] = st.groupby("trip_id", sort=False)["t"].transform(lambda s: s.interpolate(limit_area="inside"))
    st["t0"] = st.groupby("trip_id", sort=False)["t"].transform("first")

    stop_xy = stops.assign(lon=pd.to_numeric(stops["stop_lon"], errors="coerce"),
                           lat=pd.to_numeric(stops["stop_lat"], errors="coerce")).set_index("stop_id")[["lon", "lat"]]
    if not stop_xy.index.is_unique:
        dup = stop_xy.index[stop_xy.index.duplicated()][0]
        raise BundleError(f"{path}: stops.txt lists stop_id {dup!r} more than once")
    unknown_stops = ~st["stop_id"].isin(stop_xy.index)
    if unknown_stops.any():
        raise BundleError(f"{path}: stop_times.txt names {int(unknown_stops.sum())} stop ids missing from stops.txt "
                          f"(e.g. {st.loc[unknown_stops, 'stop_id'].iloc[0]!r})")

    nxt = st.groupby("trip_id", sort=False).shift(-1)
    pair = nxt["stop_id"].notna().to_numpy() & ~np.isnan(st["t"].to_numpy())
    legs = pd.DataFrame({
        "trip_id": st["trip_id"].to_numpy()[pair],
        "from_stop": st["stop_id"].to_numpy()[pair],
        "to_stop": nxt["stop_id"].to_numpy()[pair],
        "offset": (st["t"] - st["t0"]).to_numpy()[pair],
        "t": st["t"].to_numpy()[pair],
    })
    counts["stop_pairs"] = len(legs)

    if freqs is not None and len(freqs):
        f = pd.DataFrame({"trip_id": freqs["trip_id"], "start": _seconds(freqs["start_time"]),
                          "end": _seconds(freqs["end_time"]),
                          "headway": pd.to_numeric(freqs["headway_secs"], errors="coerce").to_numpy()})
        bad = ~(np.isfinite(f[["start", "end", "headway"]]).all(axis=1) & (f["headway"] > 0) & (f["end"] > f["start"]))
        counts["frequency_rows_invalid_skipped"] = int(bad.sum())
        f = f.loc[~bad]
        f["runs"] = np.ceil((f["end"] - f["start"]) / f["headway"]).astype(np.int64)
        counts["frequency_windows"] = len(f)
        with_freq = legs["trip_id"].isin(f["trip_id"])
        freq_legs = legs.loc[with_freq].merge(f, on="trip_id", how="inner")
        freq_legs["t"] = freq_legs["start"] + freq_legs["offset"]
        freq_legs = freq_legs.rename(columns={"runs": "count"})
        plain = legs.loc[~with_freq].assign(count=1)
        legs = pd.concat([freq_legs[["trip_id", "from_stop", "to_stop", "t", "count"]],
                          plain[["trip_id", "from_stop", "to_stop", "t", "count"]]], ignore_index=True)
    else:
        legs = legs.assign(count=1)

    legs = legs.merge(gtrips[["trip_id", "route_id"]], on="trip_id", how="left")
    if routes is not None:
        rt = routes.set_index("route_id")["route_type"]
        legs["route_type"] = pd.to_numeric(legs["route_id"].map(rt), errors="coerce").fillna(-1).astype(np.int64)
    o = stop_xy.loc[legs["from_stop"]]
    d = stop_xy.loc[legs["to_stop"]]
    out = gpd.GeoDataFrame(
        {"time": date + pd.to_timedelta(legs["t"].to_numpy(), unit="s"),
         "count": legs["count"].to_numpy(dtype=np.int64),
         "route_id": legs["route_id"].to_numpy(), "trip_id": legs["trip_id"].to_numpy(),
         **({"route_type": legs["route_type"].to_numpy()} if "route_type" in legs else {})},
        geometry=gpd.points_from_xy(o["lon"].to_numpy(), o["lat"].to_numpy()), crs="EPSG:4326",
    ).rename_geometry("origin")
    out["destination"] = gpd.GeoSeries(gpd.points_from_xy(d["lon"].to_numpy(), d["lat"].to_numpy()),
                                       crs="EPSG:4326")
    counts["trip_rows"] = len(out)
    counts["vehicle_runs_total"] = int(out["count"].sum())
    return out, counts


def convert(src: Path) -> CityBundle:
    """Build the São Paulo bundle from ``<data root>/sao_paulo``."""
    regions = read_regions(src)
    ids = regions["region_id"].tolist()
    table = read_table(src / HEX_CSV, ["id", *TARGETS.values()], dtype={"id": str})
    table, join = restrict_to_regions(table, "id", ids, HEX_CSV)
    targets, left_out = long_targets(table, "id", TARGETS)
    osm = read_osm(src / PBF, layers=("pois", "roads"), vocabulary=VOCABULARY)
    if osm.roads is None or osm.pois is None:
        raise BundleError(f"{src / PBF}: the OSM reader returned no roads/pois layer")
    trips, trip_counts = read_transit_trips(src / GTFS)
    provenance = {
        **PROVENANCE_BASE,
        "joins": {HEX_CSV: join},
        "targets_left_out": left_out,
        "osm_counts": osm.stats,
        "vocabulary": VOCABULARY,
        "pois_not_used": f"{len(osm.pois)} POI-tagged objects in the road-only extract; no pois layer made",
        "gtfs_counts": trip_counts,
    }
    return CityBundle(name=NAME, regions=regions, roads=osm.roads, trips=trips, targets=targets,
                      provenance=provenance, categories=load_vocabulary(VOCABULARY).categories(["roads"]))
