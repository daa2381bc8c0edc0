"""Every stage for one data set, into one run folder (library side of ``urbanrep run``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from urbanrep.bundle import CityBundle, write_bundle
from urbanrep.datasets import load_dataset

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a pipeline run produced."""

    run_dir: Path
    bundle: CityBundle
    bundle_summary: str


def run_pipeline(dataset: str | None, data_root: str | Path | None = None, run_dir: str | Path = "runs/latest") -> RunResult:
    """Resolve ``dataset``, validate it and write the bundle into ``run_dir/bundle``."""
    run_dir = Path(run_dir)
    bundle = load_dataset(dataset, data_root)
    write_bundle(bundle, run_dir / "bundle")
    return RunResult(run_dir=run_dir, bundle=bundle, bundle_summary=bundle.summary_line())
