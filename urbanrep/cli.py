"""The ``urbanrep`` command line: the only module that prints, exits or draws progress bars."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from urbanrep.errors import UrbanRepError

log = logging.getLogger("urbanrep")

DATASET_HELP = (
    "dataset name or bundle path. Resolution: an explicit bundle folder (with manifest.json); else the named "
    "data set in the data root (--data-root, else $URBANREP_DATA, else ../shared/data); else, for "
    "nyc_manhattan180 only, the copy embedded in the package. Default: nyc_manhattan180."
)


class _BarSafeHandler(logging.Handler):
    """Log lines written above the progress bars (tqdm.write) instead of through them."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record is emitted (not the stream of the first call).

    A handler bound to the stream of an earlier call would write to a closed stream once that
    stream is replaced (e.g. by a test harness capturing output), and print a logging error.
    """

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    handler: logging.Handler = _StderrHandler()
    if sys.stderr.isatty() and not quiet:
        handler = _BarSafeHandler()
    handler.setFormatter(logging.Formatter("urbanrep: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("matplotlib", "PIL", "fiona", "pyogrio", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _cmd_prepare(args: argparse.Namespace) -> int:
    from urbanrep.converters import get_converter
    from urbanrep.datasets import resolve_data_root
    from urbanrep.folders import BUNDLE, claim_folder

    if args.name == "osm":
        return _cmd_prepare_osm(args)
    given = [f"--{'name' if o == 'bundle_name' else o.replace('_', '-')}" for o in _OSM_OPTIONS
             if getattr(args, o, None) is not None]
    if given:
        raise UrbanRepError(f"{', '.join(given)} belong to 'urbanrep prepare osm', not to 'prepare {args.name}'")
    convert = get_converter(args.name)  # an unknown name: one line listing the converters, exit 1
    claim_folder(args.out, BUNDLE, overwrite=args.overwrite, create=False)  # before converting: fail fast
    root = resolve_data_root(args.data_root)
    src = root / args.name
    if not src.is_dir():
        raise UrbanRepError(f"{src} does not exist: point --data-root (or URBANREP_DATA) at the folder holding {args.name}/")
    t0 = time.perf_counter()
    bundle = convert(src)
    return _write_prepared(bundle, args, t0)


#: Options of 'urbanrep prepare osm' (dest names), refused with any other source name.
_OSM_OPTIONS = ("pbf", "regions", "boundary", "bbox", "id_column", "targets", "target_columns", "targets_kind",
                "vocabulary", "no_buildings", "bundle_name")


def _add_prepare_osm(q: Any) -> None:
    q.add_argument("--pbf", default=None, help="the OpenStreetMap extract (.osm.pbf); required with 'osm'")
    q.add_argument("--regions", default=None,
                   help="h3:<resolution 0-15> (region_id = H3 index), square:<metres> (region_id = "
                        "<size>m_E<i>_N<j> in the UTM zone), or a polygon file (default h3:9)")
    q.add_argument("--boundary", default=None, help="polygon file of the area to cover (regions are clipped to it)")
    q.add_argument("--bbox", default=None, help="area to cover as W,S,E,N in degrees (default: the extract's "
                                                "header bbox; for a polygon file, the polygons)")
    q.add_argument("--id-column", default=None, help="region id column of a polygon file (default region_id, "
                                                     "else the row number)")
    q.add_argument("--targets", default=None, help="targets: a CSV/Parquet table with region_id and numeric columns, "
                                                   "or a vector file moved onto the regions by area")
    q.add_argument("--target-columns", default=None, help="comma-separated target columns (default: every numeric "
                                                          "column except id-like ones)")
    q.add_argument("--targets-kind", choices=["extensive", "intensive"], default=None,
                   help="vector-file targets: extensive = counts (area-weighted sums, the default), intensive = "
                        "rates (area-weighted means)")
    q.add_argument("--vocabulary", default=None, help="category vocabulary (default urbanrep-osm, the latest "
                                                      "version; pin one as urbanrep-osm/1)")
    q.add_argument("--no-buildings", action="store_true", default=None,
                   help="leave building footprints out of the land-use layer")
    q.add_argument("--name", dest="bundle_name", default=None, help="bundle name (default: the extract's file name)")


def _cmd_prepare_osm(args: argparse.Namespace) -> int:
    from urbanrep.folders import BUNDLE, claim_folder
    from urbanrep.prepare import prepare_osm

    if args.pbf is None:
        raise UrbanRepError("'urbanrep prepare osm' needs --pbf FILE (an OpenStreetMap extract, e.g. from Geofabrik)")
    if args.boundary is not None and args.bbox is not None:
        raise UrbanRepError("give --boundary or --bbox, not both")
    claim_folder(args.out, BUNDLE, overwrite=args.overwrite, create=False)  # before reading: fail fast
    t0 = time.perf_counter()
    bundle = prepare_osm(
        args.pbf, args.regions or "h3:9", boundary=args.boundary, bbox=args.bbox, id_column=args.id_column,
        targets=args.targets, target_columns=args.target_columns.split(",") if args.target_columns else None,
        targets_kind=args.targets_kind or "extensive", vocabulary=args.vocabulary or "urbanrep-osm",
        buildings=not args.no_buildings, name=args.bundle_name)
    for layer, info in bundle.provenance.get("unmapped_tags", {}).items():
        log.info("%s: %d objects with tags the vocabulary does not map were left out (%s)", layer, info["total"],
                 ", ".join(f"{k} x{v}" for k, v in list(info["by_tag"].items())[:5]))
    return _write_prepared(bundle, args, t0)


def _write_prepared(bundle: Any, args: argparse.Namespace, t0: float) -> int:
    """Write a converted bundle to ``args.out``, log its report and print its summary line."""
    from urbanrep.bundle import read_bundle, write_bundle

    report = write_bundle(bundle, args.out, overwrite=args.overwrite)
    for line in report.lines():
        log.info("%s", line)
    print(read_bundle(args.out, validate=False).summary_line())
    log.info("bundle written to %s in %.1f s", args.out, time.perf_counter() - t0)
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from urbanrep.bundle import read_bundle, validate_bundle

    choice = getattr(args, "partitioned", "auto")
    partitioned: bool | str = "auto" if choice == "auto" else choice == "all"
    bundle = read_bundle(args.bundle, validate=False, partitioned=partitioned)  # type: ignore[arg-type]
    # Point layers kept on disk are scanned one row group at a time (never loaded whole).
    bundle, report = validate_bundle(bundle, scan=True)
    print(bundle.summary_line())
    from urbanrep.bundle import ValidationReport, read_manifest

    written = ValidationReport.from_dict(read_manifest(args.bundle).get("validation") or {})
    for line in written.lines():  # repairs made when the bundle was written (the files hold the result)
        if line not in report.lines():
            print(f"  note (when written): {line}")
    for line in report.lines():
        print(f"  note: {line}")
    if args.json:
        print(json.dumps({"summary": bundle.summary(), "report": report.as_dict()}, indent=2, default=str))
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if (path / "manifest.json").exists():
        return _cmd_validate(argparse.Namespace(bundle=path, json=False, partitioned="auto"))
    if path.suffix == ".pt" or (path / "graph.pt").exists():
        from urbanrep.graphs.build import load_graph
        from urbanrep.graphs.schema import graph_counts

        gpath = path if path.suffix == ".pt" else path / "graph.pt"
        data = load_graph(gpath, trust_legacy_pickle=getattr(args, "trust_legacy_pickle", False))
        print(json.dumps(graph_counts(data), indent=2))
        if path.is_dir():
            _print_run(path)
        return 0
    if path.is_dir() and (path / "embeddings.parquet").exists():
        _print_run(path)
        return 0
    raise UrbanRepError(f"{path} is neither a city bundle, a graph (.pt) nor a run folder")


def _print_run(run_dir: Path) -> None:
    from urbanrep.safe_files import read_json, read_parquet

    emb = read_parquet(run_dir / "embeddings.parquet", "re-run training to rewrite it")
    print(f"run {run_dir}: {len(emb)} regions x {emb.shape[1] - 1} embedding dims")
    from urbanrep.position import column_variances
    from urbanrep.written import COLUMNS_ATTR, column_span, grouped_columns

    for block in grouped_columns(emb.attrs.get(COLUMNS_ATTR, [])):
        print(f"  {column_span(block):<19} {block['holds']}")
    values = emb.drop(columns="region_id", errors="ignore").select_dtypes("number").to_numpy(dtype="float64")
    if values.size:  # what a fixed-penalty probe regularises by (model.output_norm, model.output_variance)
        print(f"  total variance {column_variances(values).sum():.4g} (the sum of the column variances)")
    mpath = run_dir / "metrics.json"
    if mpath.exists():
        from urbanrep.pipeline_cli import print_metrics

        print_metrics(read_json(mpath, "re-run 'urbanrep evaluate' to rewrite it"))
    for p in sorted(run_dir.iterdir()):
        print(f"  {p.name}{'/' if p.is_dir() else ''}")


def _add_dataset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", nargs="?", default=None, help=DATASET_HELP)
    p.add_argument("--data-root", default=None, help="folder holding the source data sets (default $URBANREP_DATA or ../shared/data)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for docs and tests)."""
    from urbanrep.converters import CONVERTERS

    parser = argparse.ArgumentParser(
        prog="urbanrep",
        description="Urban region embeddings from multimodal city data with graph neural networks.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=1, help="more log output")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from urbanrep import pipeline_cli

    p = sub.add_parser("prepare", help="make a city bundle: any city from an OpenStreetMap extract ('prepare osm'), "
                       "or convert a data set from the data root",
                       description="Make a city bundle. 'urbanrep prepare osm --pbf city.osm.pbf --regions h3:9 --out DIR' "
                                   "works for any city; the other names convert a data set from the data root.")
    p.add_argument("name", metavar="NAME", help=f"'osm' (any city, see the OSM options below) or a source data set "
                                                f"in the data root: {', '.join(CONVERTERS)}")
    p.add_argument("--data-root", default=None, help="folder holding the source data sets")
    p.add_argument("--out", required=True, help="bundle folder to write atomically: new, empty or (with "
                   "--overwrite) a bundle urbanrep wrote")
    pipeline_cli.add_overwrite_arg(p, "bundle")
    _add_prepare_osm(p.add_argument_group("OpenStreetMap ('urbanrep prepare osm')"))
    p.set_defaults(func=_cmd_prepare)

    p = sub.add_parser("validate", help="check a city bundle and print its summary; exit 1 if invalid")
    p.add_argument("bundle", help="bundle folder")
    p.add_argument("--json", action="store_true", help="also print the summary and report as JSON")
    p.add_argument("--partitioned", choices=["auto", "all", "none"], default="auto",
                   help="keep point layers (pois, trips) on disk and scan them by row groups: 'auto' above "
                        "256 MiB or for x/y coordinate columns, 'all', or 'none' (load them whole)")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("info", help="summarise a bundle, a graph file or a run folder")
    p.add_argument("path")
    pipeline_cli.add_trust_legacy_pickle_arg(p)
    p.set_defaults(func=_cmd_info)

    pipeline_cli.add_commands(sub, _add_dataset_args)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 user error)."""
    import warnings

    # torch_geometric scripts a few helpers at import time; torch deprecates jit.script. Not the user's concern.
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
    parser = build_parser()
    args = parser.parse_args(argv)
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    _setup_logging(args.verbose, args.quiet)
    try:
        return _run(parser, args)
    finally:  # called in-process (tests, notebooks): leave the caller's logging as it was
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from urbanrep.pipeline_cli import install_progress

    install_progress(not args.quiet)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except UrbanRepError as exc:
        print(f"urbanrep: error: {exc}", file=sys.stderr)
        return 1
    except (OSError, MemoryError, RuntimeError) as exc:
        message = system_error_message(exc)
        if message is None:
            raise
        print(f"urbanrep: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("urbanrep: interrupted", file=sys.stderr)
        return 130


def system_error_message(exc: BaseException) -> str | None:
    """One line for a failure of the machine rather than of urbanrep (disk full, no memory, no permission).

    Returns None for any other error (a bug: its traceback is shown).
    """
    import errno

    text = str(exc)
    where = f" ({exc.filename})" if isinstance(exc, OSError) and exc.filename else ""
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in text:
            return (f"no space left on the device{where}; free some space or write to another disk (--out). "
                    "Files are written atomically: nothing half-written was left behind")
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return f"permission denied{where}: {exc.strerror or text}; choose a folder you may write (--out)"
        return None
    oom = ("can't allocate memory", "out of memory", "cannot allocate memory", "unable to allocate")
    if isinstance(exc, MemoryError) or any(s in text.lower() for s in oom):
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        return (f"out of memory ({first[:200]}); use narrower layers (--set model.expert.hidden_channels=64), "
                "mini-batch training (--set train.mode=minibatch) or a machine with more memory")
    return None


def _json_default(obj: Any) -> Any:
    return str(obj)
