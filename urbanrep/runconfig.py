"""One configuration for a whole run: graph, model, training, evaluation and export.

A run configuration is a frozen dataclass of the components' own frozen configs, so a config
file mirrors the constructors::

    # experiments/configs/quick.yaml
    train:
      epochs: 100
      seed: 1
    model:
      fusion:
        mode: global        # ablation: one global weight per modality
    evaluate:
      protocol: paper

and ``--set train.epochs=50`` overrides any key on the command line. Unknown keys and wrong
types are rejected with the valid names listed.

Mini-batch training, for graphs whose full-graph step does not fit in memory (and the mode that
runs data-parallel over several processes), is one switch plus an optional section::

    train:
      mode: minibatch       # default: full
    minibatch:              # urbanrep.minibatch.MiniBatchConfig (used only in mini-batch mode)
      sampler: partition    # default; or neighbor
      batch_size: 2048      # seed regions per step
      partition_size: 256   # regions per spatial block (partition sampler)
      num_neighbors: []     # halo (partition) or hops (neighbor, default [10, 10, 5])

or ``--set train.mode=minibatch --set minibatch.batch_size=2048``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from urbanrep.configuration import apply_overrides, from_dict, read_config_file, to_dict
from urbanrep.errors import ConfigError
from urbanrep.evaluate.protocols import EvalConfig
from urbanrep.export.gis import DEFAULT_FORMATS, FORMATS
from urbanrep.graphs.config import GraphConfig
from urbanrep.minibatch import MiniBatchConfig
from urbanrep.network import ModelConfig
from urbanrep.train import TrainConfig

__all__ = ["CONFIG_FILE", "ExportConfig", "RunConfig", "load_run_config", "read_run_config"]

CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class ExportConfig:
    """What the export stage writes.

    Attributes:
        formats: GIS formats, any of ``parquet`` (GeoParquet), ``gpkg``, ``geojson`` (WGS84), ``csv``.
        figures: Draw the maps, scatter plots and the loss curve (needs ``urbanrep[plotting]``).
        report: Write the static ``report.html``.
    """

    formats: tuple[str, ...] = DEFAULT_FORMATS
    figures: bool = True
    report: bool = True

    def __post_init__(self) -> None:
        bad = [f for f in self.formats if f not in FORMATS]
        if bad:
            raise ConfigError(f"export.formats has unknown {bad}; choose from {', '.join(FORMATS)}")


@dataclass(frozen=True)
class RunConfig:
    """Every stage's configuration (each field mirrors that stage's config dataclass).

    Attributes:
        graph: Graph construction (:class:`urbanrep.graphs.GraphConfig`).
        model: Experts, MoE, fusion and losses (:class:`urbanrep.network.ModelConfig`).
        train: Training loop (:class:`urbanrep.train.TrainConfig`); ``train.mode`` picks
            full-graph (default) or mini-batch training.
        minibatch: Batch size, neighbour fan-outs and inference of mini-batch training
            (:class:`urbanrep.minibatch.MiniBatchConfig`; read only when
            ``train.mode == "minibatch"``).
        evaluate: Downstream evaluation (:class:`urbanrep.evaluate.EvalConfig`).
        export: GIS files, figures and the HTML report.
    """

    graph: GraphConfig = field(default_factory=GraphConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    minibatch: MiniBatchConfig = field(default_factory=MiniBatchConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def __post_init__(self) -> None:
        _check_finite_numbers(self, "")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready nested mapping (round-trips through :meth:`from_mapping`)."""
        out: dict[str, Any] = to_dict(self)
        return out

    @classmethod
    def from_mapping(cls, data: dict[str, Any], where: str = "config") -> RunConfig:
        """Build from a nested mapping, rejecting unknown keys and wrong types."""
        return from_dict(cls, data, where)

    @classmethod
    def from_overrides(cls, *overrides: str, path: str | Path | None = None, **dotted: Any) -> RunConfig:
        """Build from dotted overrides, as ``--set`` on the command line.

        >>> RunConfig.from_overrides("train.epochs=50", "model.fusion.mode=global")
        >>> RunConfig.from_overrides(**{"train.epochs": 50, "evaluate.protocol": "paper"})

        Args:
            overrides: ``section.key=value`` strings (values parsed as on the command line).
            path: Optional config file read first (YAML, TOML or JSON).
            dotted: ``"section.key": value`` pairs (Python values: lists for tuples, numbers, bools).

        Raises:
            ConfigError: unknown key or wrong type (the message names it and the valid keys).
        """
        import json

        pairs = list(overrides)
        for key, value in dotted.items():
            pairs.append(f"{key}={value if isinstance(value, str) else json.dumps(value)}")
        return load_run_config(path, pairs)


def _check_finite_numbers(obj: Any, prefix: str) -> None:
    """Raise :class:`ConfigError` for a NaN or infinite number anywhere in a (nested) config dataclass."""
    import dataclasses
    import math

    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            _check_finite_numbers(value, key + ".")
            continue
        values = value if isinstance(value, (tuple, list)) else (value,)
        for v in values:
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{key}={value!r} is not a finite number; give a finite value, e.g. "
                                  f"--set {key}={f.default if isinstance(f.default, (int, float)) else 1}")


def load_run_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML/TOML/JSON config file (optional) and apply ``key=value`` overrides.

    Args:
        path: Config file; ``None`` starts from the defaults.
        overrides: ``section.key=value`` strings, e.g. ``["train.epochs=50"]``.

    Raises:
        ConfigError: unreadable file, unknown key or wrong type (the message names it).
    """
    data = read_config_file(path) if path is not None else {}
    data = apply_overrides(data, list(overrides or []))
    where = str(path) if path is not None else "--set"
    return RunConfig.from_mapping(data, where)


def read_run_config(run_dir: str | Path) -> RunConfig:
    """The configuration a run folder was made with (``run_dir/config.json``)."""
    import json

    from urbanrep.safe_files import read_text

    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        raise ConfigError(f"{path} does not exist; pass a run folder written by 'urbanrep run' or 'urbanrep train'")
    try:
        data = json.loads(read_text(path, "re-run training to rewrite it", ConfigError))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"cannot parse {path}: {exc}; re-run training to rewrite it") from exc
    return RunConfig.from_mapping(data, str(path))
