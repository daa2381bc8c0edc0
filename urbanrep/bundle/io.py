"""Reading and writing city bundles (manifest + GeoParquet/Parquet layers), atomically."""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import geopandas as gpd
import pandas as pd
import pyproj

from urbanrep.atomic import atomic_path
from urbanrep.bundle.core import Aggregate, CityBundle
from urbanrep.bundle.partitioned import (
    PARTITION_BYTES,
    POINT_ROLES,
    ParquetLayer,
    has_xy_points,
    open_parquet_layer,
)
from urbanrep.bundle.spec import LAYERS, MANIFEST, RAW_LAYERS, SCHEMA_VERSION
from urbanrep.bundle.validate import ValidationReport, validate_bundle
from urbanrep.errors import BundleError

log = logging.getLogger(__name__)

FORMAT = "urbanrep-city-bundle"
#: Parquet compression for every layer (compact enough to ship the default city as package data).
COMPRESSION = "zstd"


def _crs_string(crs: Any) -> str:
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg is not None else crs.to_wkt()


def write_bundle(bundle: CityBundle, out_dir: str | Path, overwrite: bool = False) -> ValidationReport:
    """Validate ``bundle`` and write it to ``out_dir`` atomically.

    The folder appears complete or not at all. ``out_dir`` must be new or empty, or a bundle
    urbanrep wrote (replaced only with ``overwrite=True``); a folder holding any file urbanrep
    did not write is refused and left untouched.

    Returns:
        The validation report (also stored in the manifest under ``"validation"``).

    Raises:
        BundleError: the bundle is invalid (see :func:`~urbanrep.bundle.validate.validate_bundle`).
        urbanrep.folders.FolderError: ``out_dir`` holds foreign files, or an earlier bundle
            without ``overwrite``.
    """
    from urbanrep.folders import BUNDLE, claim_folder

    out_dir = Path(out_dir)
    claim_folder(out_dir, BUNDLE, overwrite=overwrite, create=False)
    bundle, report = validate_bundle(bundle)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        layers: dict[str, Any] = {}
        bundle.regions.to_parquet(tmp / "regions.parquet", index=False, compression=COMPRESSION)
        validation = {**report.as_dict(), "regions_sha256": file_sha256(tmp / "regions.parquet")}
        layers["regions"] = {"file": "regions.parquet", "records": len(bundle.regions)}
        for layer in RAW_LAYERS:
            df = getattr(bundle, layer)
            if df is None:
                continue
            fname = f"{layer}.parquet"
            if isinstance(df, ParquetLayer):  # kept on disk: the file is linked (or copied), never loaded
                _place_file(df.path, tmp / fname)
                layers[layer] = {"file": fname, **df.manifest_entry()}
                continue
            df.reset_index(drop=True).to_parquet(tmp / fname, index=False, compression=COMPRESSION)
            layers[layer] = {"file": fname, "records": len(df)}
        aggregates: dict[str, Any] = {}
        if bundle.aggregates:
            (tmp / "aggregates").mkdir()
        for agg in bundle.aggregates.values():
            fname = f"aggregates/{agg.name}.parquet"
            agg.table.reset_index(drop=True).to_parquet(tmp / fname, index=False, compression=COMPRESSION)
            aggregates[agg.name] = {"file": fname, "modality": agg.modality, "kind": agg.kind,
                                    "rows": len(agg.table), "description": agg.description}
        for name in ("targets", "labels"):
            df = getattr(bundle, name)
            if df is not None:
                df.reset_index(drop=True).to_parquet(tmp / f"{name}.parquet", index=False, compression=COMPRESSION)
                key = "target" if name == "targets" else "label"
                layers[name] = {"file": f"{name}.parquet", "records": len(df),
                                "names": list(dict.fromkeys(df[key]))}
        manifest = {
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "name": bundle.name,
            "crs": _crs_string(bundle.crs),
            "modalities": bundle.modalities,
            "layers": layers,
            "aggregates": aggregates,
            "target_groups": bundle.target_groups,
            "provenance": bundle.provenance,
            **({"categories": bundle.categories} if bundle.categories else {}),
            "validation": validation,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
    log.info("wrote bundle %s to %s", bundle.name, out_dir)
    return report


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes (streamed)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(2**24), b""):
            h.update(block)
    return h.hexdigest()


def _place_file(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (same file system), else copy it."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


Partitioned = bool | Literal["auto"] | Iterable[str]


def bundle_file(root: Path, entry: str, meta: Any) -> Path:
    """The file a manifest entry names, which must lie inside the bundle folder.

    Args:
        root: The bundle folder.
        entry: The manifest entry (``"layers.targets"``, ``"aggregates.od"``), named in errors.
        meta: The entry's mapping (its ``"file"`` is a path relative to ``root``).

    Raises:
        BundleError: the entry has no file name, or its path (symbolic links followed) leads
            outside the bundle folder.
    """
    name = meta.get("file") if isinstance(meta, dict) else None
    if not isinstance(name, str) or not name:
        raise BundleError(f"{root / MANIFEST}: entry {entry!r} names no file (\"file\": ...); fix the manifest")
    base = root.resolve()
    path = (root / name).resolve()
    if Path(name).is_absolute() or not path.is_relative_to(base):
        raise BundleError(f"{root / MANIFEST}: entry {entry!r} points to {name!r}, outside the bundle folder; every "
                          f"bundle file must lie inside {root} (copy the file into the bundle and name it relative to it)")
    return root / name


def _partitioned_layers(root: Path, layers: dict[str, Any], partitioned: Partitioned, threshold: int) -> set[str]:
    """Names of the point layers to keep on disk (see :func:`read_bundle`)."""
    present = [name for name in POINT_ROLES if name in layers]
    if partitioned is True:
        return set(present)
    if partitioned is False:
        return set()
    if partitioned == "auto":
        out = set()
        for name in present:
            path = root / layers[name]["file"]
            meta = layers[name]
            big = path.exists() and path.stat().st_size > threshold
            if meta.get("partitioned") or big or (path.exists() and has_xy_points(path, name)):
                out.add(name)
        return out
    chosen = set(partitioned)  # type: ignore[arg-type]
    unknown = chosen - set(POINT_ROLES)
    if unknown:
        raise BundleError(f"read_bundle(partitioned=...): {sorted(unknown)} cannot be read in partitions; "
                          f"only {', '.join(POINT_ROLES)} can")
    return chosen & set(present)


def _read_table(path: Path, geo: bool) -> Any:
    if not path.exists():
        raise BundleError(f"bundle file {path} is missing; re-create the bundle (urbanrep prepare) or fix the manifest")
    if geo:
        _require_geoparquet(path)
    try:
        if geo:
            return gpd.read_parquet(path)
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for truncated/corrupt files
        raise BundleError(
            f"cannot read {path}: the file is truncated or corrupt ({type(exc).__name__}: {exc}); "
            "re-create it with urbanrep prepare"
        ) from exc


def _require_geoparquet(path: Path) -> None:
    """Raise unless ``path`` is a GeoParquet file (a readable Parquet footer with ``geo`` metadata)."""
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except Exception as exc:
        raise BundleError(f"cannot read {path}: the file is truncated or corrupt ({type(exc).__name__}: {exc}); "
                          "re-create it with urbanrep prepare") from exc
    if b"geo" not in (schema.metadata or {}):
        raise BundleError(
            f"{path} is a plain Parquet file without GeoParquet metadata, so its geometry and CRS are unknown "
            f"(columns: {', '.join(schema.names[:8])}); write it from a GeoDataFrame with a CRS, e.g. "
            "gdf.set_crs('EPSG:4326').to_parquet(path), or build the bundle with urbanrep.write_bundle"
        )


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Read and check a bundle's ``manifest.json``."""
    path = Path(path)
    mpath = path / MANIFEST if path.is_dir() else path
    if not mpath.exists():
        raise BundleError(
            f"{path} is not a city bundle (no {MANIFEST}); create one with 'urbanrep prepare <name> --out DIR'"
        )
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"cannot parse {mpath}: {exc}; the manifest is truncated or corrupt") from exc
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{mpath} is not an urbanrep city bundle manifest (format={manifest.get('format')!r})")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError(f"{mpath}: bundle schema version {version} is not supported (this urbanrep reads {SCHEMA_VERSION})")
    unknown = [k for k in manifest.get("layers", {}) if k not in LAYERS]
    if unknown:
        raise BundleError(f"{mpath}: unknown layer names {unknown}; valid layer names: {', '.join(LAYERS)}")
    return manifest


def read_bundle(path: str | Path, validate: bool = True, partitioned: Partitioned = "auto",
                partition_bytes: int = PARTITION_BYTES) -> CityBundle:
    """Read a bundle folder written by :func:`write_bundle` (or by hand, following the spec).

    Point layers (``pois``, ``trips``) can stay on disk as
    :class:`~urbanrep.bundle.partitioned.ParquetLayer` (read one row group at a time by the
    graph build, never loaded whole):

    * ``partitioned="auto"`` (default): a point layer whose file is larger than
      ``partition_bytes`` (256 MiB, about 10M points), whose manifest entry says
      ``"partitioned": true``, or that holds plain ``x``/``y`` coordinate columns;
    * ``True`` / ``False``: every point layer / none;
    * an iterable of layer names, e.g. ``("trips",)``: those.

    The graph built from a partitioned layer is identical to the one built from the same
    layer in memory. Validation of a partitioned layer reads its schema and footer only (see
    :func:`~urbanrep.bundle.validate.validate_bundle` ``scan=True`` for a full pass).

    Raises:
        BundleError: if the manifest or a layer file is missing, truncated or corrupt, or the
            content is invalid (see :func:`urbanrep.bundle.validate.validate_bundle`).
    """
    root = Path(path)
    manifest = read_manifest(root)
    layers = manifest["layers"]
    if "regions" not in layers:
        raise BundleError(f"{root / MANIFEST}: the manifest lists no 'regions' layer")
    for name, meta in layers.items():  # confined before anything is opened
        bundle_file(root, f"layers.{name}", meta)
    for name, meta in manifest.get("aggregates", {}).items():
        bundle_file(root, f"aggregates.{name}", meta)
    kwargs: dict[str, Any] = {}
    keep_on_disk = _partitioned_layers(root, layers, partitioned, partition_bytes)
    for name, meta in layers.items():
        if name in keep_on_disk:
            kwargs[name] = open_parquet_layer(root / meta["file"], name, crs=meta.get("crs") or manifest.get("crs"),
                                              geometry=meta.get("geometry"))
            continue
        if name in POINT_ROLES and has_xy_points(root / meta["file"], name):
            raise BundleError(f"{root / meta['file']}: layer {name!r} holds plain coordinate columns, which are read "
                              "in partitions only; read the bundle with partitioned='auto' or partitioned=True")
        geo = name in ("regions", *RAW_LAYERS) and not (name == "trips" and _is_plain_trips(root / meta["file"]))
        kwargs[name] = _read_table(root / meta["file"], geo)
    if manifest.get("crs") and kwargs["regions"].crs is None:
        kwargs["regions"] = kwargs["regions"].set_crs(pyproj.CRS.from_user_input(manifest["crs"]))
    aggregates = {}
    for name, meta in manifest.get("aggregates", {}).items():
        table = _read_table(root / meta["file"], geo=False)
        aggregates[name] = Aggregate(name=name, modality=meta["modality"], kind=meta["kind"], table=table,
                                     description=meta.get("description", ""))
    bundle = CityBundle(
        name=manifest["name"],
        aggregates=aggregates,
        target_groups=manifest.get("target_groups", {}),
        provenance=manifest.get("provenance", {}),
        categories=manifest.get("categories", {}),
        root=root.resolve(),
        **kwargs,
    )
    if validate:
        written = (manifest.get("validation") or {}).get("regions_sha256")
        checked = bool(written) and written == file_sha256(bundle_file(root, "layers.regions", layers["regions"]))
        bundle, report = validate_bundle(bundle, regions_checked=checked)
        for line in report.lines():
            log.info("%s: %s", root, line)
    return bundle


def _is_plain_trips(path: Path) -> bool:
    """True when a trips file has no geometry columns (zone ids only)."""
    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(path).metadata or {}
    except Exception as exc:
        raise BundleError(f"cannot read {path}: the file is truncated or corrupt ({exc}); re-create it") from exc
    return b"geo" not in meta
