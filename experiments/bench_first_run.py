"""A new user's first command: the default ``urbanrep run`` on NYC-180, timed three ways.

Each way runs ``python -m urbanrep run --out <tmp>/<way>`` in a fresh subprocess of this one (so
the imports, the bundle, the graph, training, evaluation and the export all count):

* ``quiet``: the default settings, nothing else started by this script;
* ``busy``: the default settings while one core is kept busy by a spinning process started here
  (what a laptop with a browser, an IDE or another job looks like);
* ``omp1``: ``OMP_NUM_THREADS=1`` (the one-thread reference);
* ``busy_omp1``: ``OMP_NUM_THREADS=1`` with the spinning process (the one-thread reference under
  the same extra load as ``busy``, so that ``busy / busy_omp1`` isolates the thread choice).

``busy_omp1`` runs only when asked for (``--ways``). ``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS`` are removed from the environment of the first two, so
that they measure the default thread choice. For each way the script prints the wall seconds, the
CPU seconds of the run (user + system of the ``urbanrep`` process and its children, not counting
the spinner), the training stage's seconds from ``run.json`` and the 1-minute load average before
the run started. "quiet" means only that this script adds no load: on a shared machine other
processes still run, and the load average says how busy it was.

Targets (issue 17): the busy default within 1.3x of the one-thread run; ``quiet`` <= 30 s wall on a
2-core machine that is really quiet.

    python -m experiments.bench_first_run                       # data root if present, else embedded copy
    python -m experiments.bench_first_run --embedded --json /tmp/first_run.json
    python -m experiments.bench_first_run --set train.epochs=30  # a quick look at the script itself
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

WAYS = ("quiet", "busy", "omp1", "busy_omp1")
SPIN = "while True:\n    pass\n"


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_way(way: str, out: Path, extra: list[str]) -> dict[str, Any]:
    """One timed ``urbanrep run`` (the spinner, for ``busy``, runs only around it)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    if way in ("omp1", "busy_omp1"):
        env["OMP_NUM_THREADS"] = "1"
    spinner = subprocess.Popen([sys.executable, "-c", SPIN]) if way.startswith("busy") else None
    try:
        if spinner is not None:
            time.sleep(1.0)  # let it take its core
        load = os.getloadavg()[0]
        cmd = [sys.executable, "-m", "urbanrep", "run", "--out", str(out / way), *extra]
        cpu0, t0 = _children_cpu(), time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        wall, cpu = time.perf_counter() - t0, _children_cpu() - cpu0  # the spinner is not reaped yet
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    if proc.returncode != 0:
        raise SystemExit(f"{way}: urbanrep run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    stages = json.loads((out / way / "run.json").read_text())["stages_s"]
    threads = next((line.split("urbanrep: ", 1)[-1] for line in proc.stderr.splitlines() if "torch thread" in line),
                   "")
    return {"way": way, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "train_s": round(stages.get("train", 0), 1),
            "load_before": round(load, 2), "threads": threads, "stages_s": stages}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--ways", nargs="+", choices=WAYS, default=["quiet", "busy", "omp1"])
    p.add_argument("--embedded", action="store_true",
                   help="use the NYC-180 copy embedded in the package (as on a fresh clone without a data root)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="passed on to urbanrep run")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)

    extra = [x for kv in args.set for x in ("--set", kv)]
    if args.embedded:
        extra += ["--data-root", "/nonexistent-urbanrep-data-root"]
    print(f"{platform.node()}: {os.cpu_count()} CPUs, python {platform.python_version()}; "
          f"command: urbanrep run {' '.join(extra)}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="urbanrep-first-run-") as tmp:
        for way in args.ways:
            row = run_way(way, Path(tmp), extra)
            rows.append(row)
            print(f"{way:<6} wall {row['wall_s']:6.1f} s  CPU {row['cpu_s']:6.1f} s  train {row['train_s']:6.1f} s  "
                  f"load average before {row['load_before']:.2f}", flush=True)
            print(f"       stages: {', '.join(f'{k} {v:.1f} s' for k, v in row['stages_s'].items())}; {row['threads']}",
                  flush=True)
    by = {r["way"]: r for r in rows}
    for ref in ("omp1", "busy_omp1"):
        if "busy" in by and ref in by:
            print(f"busy default / {ref} wall: {by['busy']['wall_s'] / by[ref]['wall_s']:.2f}x, CPU: "
                  f"{by['busy']['cpu_s'] / by[ref]['cpu_s']:.2f}x (target <= 1.3x)")
    if "quiet" in by:
        print(f"quiet wall: {by['quiet']['wall_s']:.1f} s (target <= 30 s on a quiet 2-core machine; "
              f"load average here was {by['quiet']['load_before']:.2f})")
    if args.json:
        from urbanrep.atomic import write_text_atomic

        write_text_atomic(args.json, json.dumps({"rows": rows, "command": ["urbanrep", "run", *extra]}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
