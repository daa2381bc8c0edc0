"""A look (development cities only): the mobility expert at its own learning rate inside any model.

``train.mobility_only_lr_scale`` speeds up a model whose only modality is mobility as a whole. This
script asks whether the mobility expert is also under-optimised beside other modalities: it runs
:mod:`experiments.select_design` with an optimiser of two parameter groups, the mobility expert and
the OD decoder (``mob_src``, ``mob_dst``) at ``--scale`` times the rate, every other parameter at the
model's own rate (:func:`urbanrep.train.learning_rate`). Use a cache folder of its own: the runs are
stored under the default's names.

Usage::

    python -m experiments.mobility_rate_look --scale 10 --out /tmp/moblr10 --cities chicago77 sao_paulo \\
        --candidates urbanrep --seeds 0 1 2
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

#: Parameter-name parts of the mobility expert and the OD-distribution decoder.
MOBILITY_PARTS = ("experts.mobility", "mob_src", "mob_dst")


def grouped_optimiser(model: Any, tc: Any, scale: float) -> Any:
    """AdamW with the mobility parameters (:data:`MOBILITY_PARTS`) at ``scale`` times the model's rate."""
    import torch

    from urbanrep.train import learning_rate

    lr = learning_rate(tc, model.modalities)
    mobility, rest = [], []
    for name, param in model.named_parameters():
        (mobility if any(part in name for part in MOBILITY_PARTS) else rest).append(param)
    return torch.optim.AdamW([{"params": rest, "lr": lr}, {"params": mobility, "lr": lr * scale}], lr=lr,
                             weight_decay=tc.weight_decay, foreach=True)


def main(argv: Sequence[str] | None = None) -> int:
    import urbanrep.train as train_module
    from experiments import select_design

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=False)
    p.add_argument("--scale", type=float, required=True, help="the mobility parameters' rate as a multiple")
    args, rest = p.parse_known_args(argv)
    train_module.make_optimiser = lambda model, tc: grouped_optimiser(model, tc, args.scale)  # type: ignore[assignment]
    return select_design.main(rest)


if __name__ == "__main__":
    raise SystemExit(main())
