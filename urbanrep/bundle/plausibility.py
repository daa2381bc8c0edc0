"""Is this the right map? CRS plausibility, coordinate order and overlapping regions.

A layer whose coordinates do not fit its CRS (metres labelled EPSG:4326, degrees labelled with a
metric CRS, coordinates outside the area the CRS is defined for, points in latitude/longitude
order) would be joined to the wrong regions without any error. These checks refuse such layers
with the fix. Overlapping regions are refused above :data:`OVERLAP_TOLERANCE`; below it the
overlap is cut from the later region of each pair and reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import geopandas as gpd
import numpy as np
import pyproj
import shapely

from urbanrep.errors import BundleError

#: Overlap of two regions, as a share of the smaller one, above which the bundle is refused.
OVERLAP_TOLERANCE = 0.01
#: Overlaps below this share of the smaller region are floating-point noise of shared boundaries.
OVERLAP_NOISE = 1e-9
#: A projected layer whose whole extent is smaller than this (in its units) holds degrees, not metres.
DEGREE_LIKE_SPAN = 5.0
_SAMPLE = 20_000


def _bounds_text(b: np.ndarray) -> str:
    return f"x {b[0]:.6g}..{b[2]:.6g}, y {b[1]:.6g}..{b[3]:.6g}"


def _crs_name(crs: pyproj.CRS) -> str:
    epsg = crs.to_epsg()
    return f"EPSG:{epsg} ({crs.name})" if epsg else crs.name


def _finite_bounds(geoms: gpd.GeoSeries) -> np.ndarray | None:
    b = np.asarray(geoms.total_bounds, dtype=np.float64)
    return b if np.isfinite(b).all() else None


def check_crs_plausible(geoms: gpd.GeoSeries, layer: str) -> None:
    """Refuse coordinates that cannot be in ``geoms.crs``.

    * geographic CRS: longitudes beyond ±180 or latitudes beyond ±90 (metres labelled as degrees,
      or latitude/longitude swapped);
    * projected CRS: a whole layer within a few units and inside ±180/±90 (degrees labelled as
      metres);
    * any CRS: coordinates far outside the CRS's area of use.

    Raises:
        BundleError: naming the layer, its coordinate range, the CRS and the fix.
    """
    crs = geoms.crs
    if crs is None or len(geoms) == 0:
        return
    crs = pyproj.CRS.from_user_input(crs)
    b = _finite_bounds(geoms)
    if b is None:
        raise BundleError(f"layer {layer!r}: coordinates are NaN or infinite; fix or remove those geometries")
    name = _crs_name(crs)
    if crs.is_geographic:
        if max(abs(b[0]), abs(b[2])) > 180 or max(abs(b[1]), abs(b[3])) > 90:
            if max(abs(b[0]), abs(b[2])) <= 90 and max(abs(b[1]), abs(b[3])) <= 180:
                raise BundleError(
                    f"layer {layer!r}: coordinates ({_bounds_text(b)}) have latitudes beyond ±90 in {name}: they are in "
                    "(latitude, longitude) order; GeoPandas wants x = longitude, y = latitude: build the points with "
                    "gpd.points_from_xy(lon, lat)")
            raise BundleError(
                f"layer {layer!r}: coordinates ({_bounds_text(b)}) are not degrees, but the layer is labelled {name}; "
                "they look like metres or feet of a projected CRS: label the layer with the CRS it was made in, e.g. "
                "gdf.set_crs('EPSG:32618', allow_override=True) for UTM zone 18N")
        if b[3] < -60 and max(abs(b[0]), abs(b[2])) <= 90:
            raise BundleError(
                f"layer {layer!r}: every coordinate ({_bounds_text(b)}) lies south of 60°S (Antarctica) in {name}: the "
                "coordinates are most likely in (latitude, longitude) order; build the points with "
                "gpd.points_from_xy(lon, lat)")
    elif crs.is_projected:
        span = max(b[2] - b[0], b[3] - b[1])
        inside_degrees = max(abs(b[0]), abs(b[2])) <= 180 and max(abs(b[1]), abs(b[3])) <= 90
        if inside_degrees and span < DEGREE_LIKE_SPAN and len(geoms) > 1:
            unit = crs.axis_info[0].unit_name if crs.axis_info else "units"
            raise BundleError(
                f"layer {layer!r} is labelled {name} ({unit}) but its coordinates ({_bounds_text(b)}) look like "
                f"longitude/latitude degrees: the whole layer would span {span:.3g} {unit}; label it as degrees: "
                "gdf.set_crs('EPSG:4326', allow_override=True)")
    _check_area_of_use(b, crs, layer, name)


def _check_area_of_use(b: np.ndarray, crs: pyproj.CRS, layer: str, name: str) -> None:
    area = crs.area_of_use
    if area is None:
        return
    if crs.is_geographic:
        lon, lat = np.array([b[0], b[2], (b[0] + b[2]) / 2]), np.array([b[1], b[3], (b[1] + b[3]) / 2])
    else:
        to_ll = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
        xs = np.array([b[0], b[2], b[0], b[2], (b[0] + b[2]) / 2])
        ys = np.array([b[1], b[1], b[3], b[3], (b[1] + b[3]) / 2])
        with np.errstate(all="ignore"):
            lon, lat = to_ll.transform(xs, ys, errcheck=False)
        lon, lat = np.asarray(lon), np.asarray(lat)
        if not (np.isfinite(lon).all() and np.isfinite(lat).all()):
            raise BundleError(f"layer {layer!r}: coordinates ({_bounds_text(b)}) cannot be transformed out of {name}; "
                              "they do not belong to that CRS: label the layer with the CRS it was made in")
    west, south, east, north = area.west, area.south, area.east, area.north
    if east < west:  # the area crosses the antimeridian
        return
    margin_x = max(5.0, 0.5 * (east - west))
    margin_y = max(5.0, 0.5 * (north - south))
    centre_lon, centre_lat = float(lon[-1]), float(lat[-1])
    if not (west - margin_x <= centre_lon <= east + margin_x and south - margin_y <= centre_lat <= north + margin_y):
        raise BundleError(
            f"layer {layer!r}: its coordinates ({_bounds_text(b)}) lie around lon {centre_lon:.2f}, lat {centre_lat:.2f}, "
            f"far outside the area where {name} is used (lon {west:.1f}..{east:.1f}, lat {south:.1f}..{north:.1f}); "
            "the CRS label is wrong: label the layer with the CRS it was made in (gdf.set_crs(..., allow_override=True))")


def check_point_order(points: gpd.GeoSeries, original_crs: Any, regions: gpd.GeoDataFrame, layer: str) -> None:
    """Refuse a point layer that misses the regions but hits them with x and y swapped.

    Args:
        points: The layer's points in the regions' CRS.
        original_crs: The CRS the layer came in (the swap is tried there, for geographic CRSs).
        regions: The regions.
        layer: Name for messages.

    Raises:
        BundleError: most points fall outside the regions' extent, but with x and y swapped in
            the layer's own (geographic) CRS most fall inside.
    """
    if original_crs is None or not pyproj.CRS.from_user_input(original_crs).is_geographic or len(points) == 0:
        return
    rb = np.asarray(regions.total_bounds, dtype=np.float64)
    pad = 0.1 * max(rb[2] - rb[0], rb[3] - rb[1])
    rb = rb + np.array([-pad, -pad, pad, pad])
    sample = points.iloc[:: max(1, len(points) // _SAMPLE)]
    xy = shapely.get_coordinates(np.asarray(sample.values, dtype=object))
    if not len(xy):
        return

    def inside(c: np.ndarray) -> float:
        ok = (c[:, 0] >= rb[0]) & (c[:, 0] <= rb[2]) & (c[:, 1] >= rb[1]) & (c[:, 1] <= rb[3])
        return float(ok.mean())

    if inside(xy) >= 0.5:
        return
    src = pyproj.CRS.from_user_input(original_crs)
    back = pyproj.Transformer.from_crs(regions.crs, src, always_xy=True)
    forth = pyproj.Transformer.from_crs(src, regions.crs, always_xy=True)
    with np.errstate(all="ignore"):
        lon, lat = back.transform(xy[:, 0], xy[:, 1], errcheck=False)
        sx, sy = forth.transform(np.asarray(lat), np.asarray(lon), errcheck=False)
    swapped = np.column_stack([np.asarray(sx), np.asarray(sy)])
    swapped = swapped[np.isfinite(swapped).all(axis=1)]
    if len(swapped) and inside(swapped) >= 0.9:
        raise BundleError(
            f"layer {layer!r}: {100 * (1 - inside(xy)):.0f} % of its points fall outside the regions, but with x and y "
            "swapped they fall inside: its coordinates are in (latitude, longitude) order; GeoPandas wants "
            "x = longitude, y = latitude: build the points with gpd.points_from_xy(lon, lat)")


@dataclass
class OverlapRepair:
    """Region overlaps below the tolerance, cut from the later region of each pair."""

    pairs: int
    area_m2: float
    largest: str

    def line(self) -> str:
        return (f"regions: {self.pairs} pair(s) of regions overlapped by {self.area_m2:.6g} m² in all (below the "
                f"{100 * OVERLAP_TOLERANCE:g} % tolerance; largest: {self.largest}); each overlap was cut from the later "
                "region of the pair, so every point lies in one region only")


def _metric(regions: gpd.GeoDataFrame) -> gpd.GeoSeries:
    crs = pyproj.CRS.from_user_input(regions.crs)
    if crs.is_projected:
        return regions.geometry
    return regions.geometry.to_crs(regions.geometry.estimate_utm_crs())


def _overlapping_pairs(geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs ``i < j`` of polygons whose interiors meet (they overlap, or one contains the other).

    Candidates come from the bounding-box index, each pair once; ``overlaps`` runs on prepared
    geometries and ``contains`` only where one box lies within the other (about half the time
    of two predicate queries on a tessellation).
    """
    tree = shapely.STRtree(geoms)
    i, j = tree.query(geoms)
    keep = i < j
    i, j = i[keep], j[keep]
    shapely.prepare(geoms)
    try:
        hit = shapely.overlaps(geoms[i], geoms[j])
        b = shapely.bounds(geoms)
        bi, bj = b[i], b[j]
        i_in_j = (bj[:, 0] <= bi[:, 0]) & (bj[:, 1] <= bi[:, 1]) & (bj[:, 2] >= bi[:, 2]) & (bj[:, 3] >= bi[:, 3])
        j_in_i = (bi[:, 0] <= bj[:, 0]) & (bi[:, 1] <= bj[:, 1]) & (bi[:, 2] >= bj[:, 2]) & (bi[:, 3] >= bj[:, 3])
        todo = np.flatnonzero(~hit & (i_in_j | j_in_i))
        if todo.size:
            a, c = geoms[i[todo]], geoms[j[todo]]
            hit[todo] = shapely.contains(a, c) | shapely.contains(c, a)
    finally:
        shapely.destroy_prepared(geoms)
    return i[hit], j[hit]


def check_overlaps(regions: gpd.GeoDataFrame) -> tuple[gpd.GeoDataFrame, OverlapRepair | None]:
    """Refuse regions that overlap above :data:`OVERLAP_TOLERANCE`; cut and report smaller overlaps.

    Returns:
        The regions (the later region of each slightly overlapping pair without the overlap)
        and the repair (None when no region overlaps another).

    Raises:
        BundleError: naming the pairs above the tolerance and how much they overlap.
    """
    left, right = _overlapping_pairs(np.asarray(regions.geometry.values, dtype=object))
    if left.size == 0:
        return regions, None
    metric = np.asarray(_metric(regions).values, dtype=object)
    inter = shapely.area(shapely.intersection(metric[left], metric[right]))
    smaller = np.minimum(shapely.area(metric[left]), shapely.area(metric[right]))
    share = np.divide(inter, smaller, out=np.ones_like(inter), where=smaller > 0)
    real = share > OVERLAP_NOISE
    left, right, inter, share = left[real], right[real], inter[real], share[real]
    if left.size == 0:
        return regions, None
    ids = [v.item() if isinstance(v, np.generic) else v for v in regions["region_id"].to_numpy()]
    bad = np.flatnonzero(share > OVERLAP_TOLERANCE)
    if bad.size:
        worst = bad[np.argsort(-share[bad])][:5]
        listed = "; ".join(f"{ids[left[k]]!r} and {ids[right[k]]!r} by {inter[k]:.6g} m² ({100 * share[k]:.1f} % of the "
                           "smaller)" for k in worst)
        more = f" ({bad.size} pairs in all)" if bad.size > len(worst) else ""
        raise BundleError(
            f"regions layer: regions overlap: {listed}{more}; regions must not overlap by more than "
            f"{100 * OVERLAP_TOLERANCE:g} % (a point in the overlap would count for one of them only): fix the "
            "polygons, e.g. clip or dissolve them")
    out = regions.copy()
    col = out.geometry.name
    geoms = np.asarray(out.geometry.values, dtype=object).copy()
    for j in np.unique(right):
        earlier = geoms[left[right == j]]
        cut = shapely.difference(geoms[j], shapely.union_all(earlier))
        geoms[j] = polygonal(cut)
    out[col] = gpd.GeoSeries(geoms, index=out.index, crs=out.crs)
    k = int(np.argmax(inter))
    largest = f"{ids[left[k]]!r} and {ids[right[k]]!r}, {inter[k]:.6g} m² ({100 * share[k]:.3g} % of the smaller)"
    return out, OverlapRepair(pairs=int(left.size), area_m2=float(inter.sum()), largest=largest)


def polygonal(geom: Any) -> Any:
    """The polygonal part of a geometry (``make_valid`` and ``difference`` may add points or lines)."""
    if geom.geom_type in ("Polygon", "MultiPolygon"):
        return geom
    parts = [g for g in getattr(geom, "geoms", [geom]) if g.geom_type in ("Polygon", "MultiPolygon")]
    return shapely.union_all(parts) if parts else geom
