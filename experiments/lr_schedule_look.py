"""A look (development cities only): the default trained with a cosine learning-rate decay.

``TrainConfig`` has a constant learning rate. This script runs :mod:`experiments.transform_looks`
with every optimisation step's learning rate set from the epoch: ``lr * (floor + (1 - floor) * (1 +
cos(pi * (epoch - 1) / (epochs - 1))) / 2)``, from ``lr`` at the first epoch down to ``floor * lr``
at the last. Use a cache folder of its own: the runs are stored under the default's names.

Usage::

    python -m experiments.lr_schedule_look --floor 0 --out /tmp/cosine --variants default \\
        --cities chicago77 singapore sao_paulo [--epochs 600]
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Sequence
from typing import Any


def cosine_rate(lr: float, epoch: int, epochs: int, floor: float) -> float:
    """The learning rate of ``epoch`` (1-based) of ``epochs`` under the cosine decay to ``floor * lr``."""
    frac = (epoch - 1) / max(epochs - 1, 1)
    return lr * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * frac)))


def main(argv: Sequence[str] | None = None) -> int:
    import urbanrep.train as train_module
    from experiments import transform_looks

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=False)
    p.add_argument("--floor", type=float, default=0.0, help="last epoch's learning rate as a share of the first's")
    args, rest = p.parse_known_args(argv)
    step = train_module.optimisation_step

    def decayed_step(model: Any, data: Any, opt: Any, gen: Any, tc: Any, device: Any, where: str,
                     sync: Any = None) -> Any:
        epoch = re.match(r"epoch (\d+)", where)
        if epoch is None:
            raise SystemExit(f"lr_schedule_look: cannot read the epoch from {where!r}")
        for group in opt.param_groups:
            group["lr"] = cosine_rate(tc.lr, int(epoch.group(1)), tc.epochs, args.floor)
        return step(model, data, opt, gen, tc, device, where, sync)

    train_module.optimisation_step = decayed_step  # train() looks it up at each step
    try:
        return transform_looks.main(rest)
    finally:
        train_module.optimisation_step = step


if __name__ == "__main__":
    raise SystemExit(main())
