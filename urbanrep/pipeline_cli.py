"""CLI commands for the pipeline stages (part of the CLI layer: may print)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

from urbanrep.errors import UrbanRepError


def _default_run_dir(dataset: str | None) -> Path:
    name = Path(dataset).name if dataset else "nyc_manhattan180"
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _cmd_run(args: argparse.Namespace) -> int:
    from urbanrep.pipeline import run_pipeline

    out = Path(args.out) if args.out else _default_run_dir(args.dataset)
    t0 = time.perf_counter()
    result = run_pipeline(args.dataset, data_root=args.data_root, run_dir=out)
    print(result.bundle_summary)
    print(f"run folder: {out} ({time.perf_counter() - t0:.1f} s)")
    return 0


def add_commands(sub: argparse._SubParsersAction, add_dataset_args: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register the pipeline subcommands on the main parser."""
    p = sub.add_parser("run", help="every stage for one data set into one run folder (default NYC-180)",
                       description="Run every stage for one data set into one run folder.")
    add_dataset_args(p)
    p.add_argument("--out", default=None, help="run folder (default runs/<name>-<timestamp>)")
    p.set_defaults(func=_cmd_run)


__all__ = ["UrbanRepError", "add_commands"]
