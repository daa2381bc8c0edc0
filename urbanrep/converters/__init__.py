"""Converters (``urbanrep.converters``): one thin module per source folder in the data root, each returning a CityBundle.

Every converter module exposes ``convert(source_dir: Path) -> CityBundle`` where ``source_dir``
is ``<data root>/<name>``. Converters read and rename; they hold no modelling logic.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from urbanrep.bundle import CityBundle
from urbanrep.errors import UrbanRepError

#: Converter names (= folder names in the data root) mapped to their module.
CONVERTERS: dict[str, str] = {
    "nyc_manhattan180": "urbanrep.converters.nyc_manhattan180",
    "chicago77": "urbanrep.converters.chicago77",
    "nyc_tracts": "urbanrep.converters.nyc_tracts",
    "singapore": "urbanrep.converters.singapore",
    "helsinki_osm": "urbanrep.converters.helsinki_osm",
    "sao_paulo": "urbanrep.converters.sao_paulo",
    "imagery_samples": "urbanrep.converters.imagery_samples",
}


def get_converter(name: str) -> Callable[[Path], CityBundle]:
    """Return the ``convert`` function of the named converter."""
    if name not in CONVERTERS:
        raise UrbanRepError(f"unknown dataset {name!r}; converters exist for: {', '.join(CONVERTERS)}")
    module = importlib.import_module(CONVERTERS[name])
    return module.convert  # type: ignore[no-any-return]
