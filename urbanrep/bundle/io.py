"""Reading and writing city bundles (manifest + GeoParquet/Parquet layers), atomically."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import geopandas as gpd
import pandas as pd
import pyproj

from urbanrep.atomic import atomic_path
from urbanrep.bundle.core import Aggregate, CityBundle
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


def write_bundle(bundle: CityBundle, out_dir: str | Path) -> ValidationReport:
    """Validate ``bundle`` and write it to ``out_dir`` atomically.

    The folder appears complete or not at all; an existing bundle at ``out_dir`` is replaced.

    Returns:
        The validation report (also stored in the manifest under ``"validation"``).
    """
    bundle, report = validate_bundle(bundle)
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        layers: dict[str, Any] = {}
        bundle.regions.to_parquet(tmp / "regions.parquet", index=False, compression=COMPRESSION)
        layers["regions"] = {"file": "regions.parquet", "records": len(bundle.regions)}
        for layer in RAW_LAYERS:
            df = getattr(bundle, layer)
            if df is None:
                continue
            fname = f"{layer}.parquet"
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
            "validation": report.as_dict(),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
    log.info("wrote bundle %s to %s", bundle.name, out_dir)
    return report


def _read_table(path: Path, geo: bool) -> Any:
    if not path.exists():
        raise BundleError(f"bundle file {path} is missing; re-create the bundle (urbanrep prepare) or fix the manifest")
    try:
        if geo:
            return gpd.read_parquet(path)
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for truncated/corrupt files
        raise BundleError(
            f"cannot read {path}: the file is truncated or corrupt ({type(exc).__name__}: {exc}); "
            "re-create it with urbanrep prepare"
        ) from exc


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


def read_bundle(path: str | Path, validate: bool = True) -> CityBundle:
    """Read a bundle folder written by :func:`write_bundle` (or by hand, following the spec).

    Raises:
        BundleError: if the manifest or a layer file is missing, truncated or corrupt, or the
            content is invalid (see :func:`urbanrep.bundle.validate.validate_bundle`).
    """
    root = Path(path)
    manifest = read_manifest(root)
    layers = manifest["layers"]
    if "regions" not in layers:
        raise BundleError(f"{root / MANIFEST}: the manifest lists no 'regions' layer")
    kwargs: dict[str, Any] = {}
    for name, meta in layers.items():
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
        root=root.resolve(),
        **kwargs,
    )
    if validate:
        bundle, report = validate_bundle(bundle)
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
