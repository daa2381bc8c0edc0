"""Where a dataset name resolves: bundle path, data root, or the embedded default city.

Resolution order for ``urbanrep run NAME``:

1. ``NAME`` is a path to a bundle folder (has ``manifest.json``) → that bundle.
2. ``NAME`` is a converter name and ``<data root>/NAME`` exists → converted from the data root,
   where the data root is ``--data-root``, else ``$URBANREP_DATA``, else ``../shared/data``.
3. ``NAME`` is ``nyc_manhattan180`` → the copy embedded in the package (one log line says so).
4. Otherwise a one-line error listing the names that can be resolved.
"""

from __future__ import annotations

import logging
import os
from importlib import resources
from pathlib import Path

from urbanrep.bundle import CityBundle, read_bundle
from urbanrep.bundle.spec import MANIFEST
from urbanrep.errors import UrbanRepError

log = logging.getLogger(__name__)

DEFAULT_DATASET = "nyc_manhattan180"
EMBEDDED = ("nyc_manhattan180",)
ENV_VAR = "URBANREP_DATA"


def default_data_root() -> Path:
    """``$URBANREP_DATA`` if set, else ``../shared/data`` beside the source checkout or the cwd."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    here = Path(__file__).resolve().parents[3] / "shared" / "data"  # <checkout>/../shared/data
    if here.is_dir():
        return here
    return (Path.cwd().parent / "shared" / "data").resolve()


def resolve_data_root(data_root: str | Path | None = None) -> Path:
    """The data root to use: the explicit argument, else :func:`default_data_root`."""
    return Path(data_root).expanduser() if data_root is not None else default_data_root()


def embedded_path(name: str = DEFAULT_DATASET) -> Path:
    """Folder of an embedded bundle inside the installed package."""
    ref = resources.files("urbanrep.datasets") / name
    return Path(str(ref))


def available_names(data_root: Path) -> list[str]:
    """Dataset names that resolve right now (data-root converters plus embedded copies)."""
    from urbanrep.converters import CONVERTERS

    names = [n for n in CONVERTERS if (data_root / n).is_dir()]
    names += [n for n in EMBEDDED if n not in names and (embedded_path(n) / MANIFEST).exists()]
    return names


def load_dataset(name_or_path: str | None = None, data_root: str | Path | None = None) -> CityBundle:
    """Resolve a dataset name or bundle path to a validated :class:`CityBundle`."""
    from urbanrep.converters import CONVERTERS, get_converter

    name = name_or_path or DEFAULT_DATASET
    as_path = Path(name).expanduser()
    if (as_path / MANIFEST).exists():
        return read_bundle(as_path)
    if as_path.exists() and as_path.is_dir() and (os.sep in name or name.startswith(".")):
        raise UrbanRepError(f"{as_path} is a folder but not a city bundle (no {MANIFEST}); "
                            "create one with 'urbanrep prepare <name> --out DIR'")
    root = resolve_data_root(data_root)
    if name in CONVERTERS and (root / name).is_dir():
        log.info("preparing %s from the data root %s", name, root)
        from urbanrep.bundle import validate_bundle

        bundle, report = validate_bundle(get_converter(name)(root / name))
        for line in report.lines():
            log.info("%s: %s", name, line)
        return bundle
    if name in EMBEDDED and (embedded_path(name) / MANIFEST).exists():
        if root.is_dir():
            log.info("data root %s has no %s: using the copy embedded in the urbanrep package", root, name)
        else:
            log.info("%s: using the copy embedded in the urbanrep package (no data root at %s; set --data-root "
                     "or URBANREP_DATA to use one)", name, root)
        return read_bundle(embedded_path(name))
    raise UrbanRepError(
        f"cannot find dataset {name!r}: not a bundle folder, not in the data root {root}"
        f"; names that resolve: {', '.join(available_names(root)) or 'none'}"
        " (set --data-root or URBANREP_DATA, or pass a bundle path)"
    )
