"""The city bundle: one documented on-disk format for a city's regions and modality layers."""

from urbanrep.bundle.core import Aggregate, CityBundle
from urbanrep.bundle.io import read_bundle, read_manifest, write_bundle
from urbanrep.bundle.spec import AGGREGATED_MODALITIES, LAYERS, MODALITIES, RAW_LAYERS, SCHEMA_VERSION
from urbanrep.bundle.validate import ValidationReport, ensure_validated, validate_bundle

__all__ = [
    "AGGREGATED_MODALITIES",
    "LAYERS",
    "MODALITIES",
    "RAW_LAYERS",
    "SCHEMA_VERSION",
    "Aggregate",
    "CityBundle",
    "ValidationReport",
    "ensure_validated",
    "read_bundle",
    "read_manifest",
    "validate_bundle",
    "write_bundle",
]
