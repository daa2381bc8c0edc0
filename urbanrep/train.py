"""Training loop: fixed epoch budget, seeded, checkpointed, resumable.

``train(data, ModelConfig(), TrainConfig(), run_dir)`` trains a :class:`~urbanrep.network.RegionModel`
on one region graph (full-graph, transductive) and returns a :class:`TrainResult`. With a
``run_dir`` it writes (every file atomically, except ``loss.csv``, which grows by one row per
epoch so a running job can be watched, and is rewritten from the checkpoint on resume)::

    run_dir/checkpoints/epoch_000100.pt   model, optimiser, RNG states, epoch, history
    run_dir/loss.csv                      epoch, total, one column per loss part
    run_dir/embeddings.parquet            region_id, emb_000, emb_001, ...
    run_dir/fusion_weights.parquet        region_id, one column per modality
    run_dir/model.pt                      final weights + configs (see :func:`load_model`)

Progress: the log gets a line at epoch 1, every ``log_every`` epochs and at least every
:data:`LOG_INTERVAL_S` seconds, each with the epochs done, seconds per epoch, the time spent and
the time left (ETA); the last epoch ends with the wall and CPU seconds of the loop. CPU threads:
see :func:`choose_threads` (one thread for graphs too small for more to pay, which is every city
of the benchmark; the choice and its reason are logged).

``resume=True`` continues from the latest checkpoint and ends with exactly the embedding an
uninterrupted run would give (on CPU, where kernels are deterministic); it refuses a checkpoint
written with another model configuration, graph, seed or optimisation setting.

``TrainConfig(mode="minibatch")`` (``--set train.mode=minibatch`` on the command line) hands the
same call to :func:`urbanrep.minibatch.train_minibatch`: mini-batches of regions, the same
run-folder layout and resume guarantee, and data parallelism over ``torch.distributed`` ranks.
The checkpoint helpers below (:func:`check_resumable`, :func:`save_checkpoint`,
:class:`LossLog`, :class:`EarlyStopping`, :func:`write_run_outputs`) are shared by both loops.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch_geometric.data import HeteroData

from urbanrep.allocator import POLICIES as MALLOC_POLICIES
from urbanrep.allocator import tune_allocator
from urbanrep.atomic import atomic_path, write_bytes_atomic, write_parquet_atomic
from urbanrep.cores import cores_and_load, free_of
from urbanrep.distributed import current_ranks, env_world_size
from urbanrep.errors import ConfigError, UrbanRepError
from urbanrep.experts.base import ExpertConfig
from urbanrep.experts.mobility import flow_inputs_for, with_flow_profile
from urbanrep.experts.moe import MoEConfig
from urbanrep.fusion.losses import LossConfig
from urbanrep.fusion.spatial import FusionConfig
from urbanrep.graphs.schema import validate_graph
from urbanrep.network import (
    GraphMetadata,
    ModelConfig,
    RegionModel,
    combine_member_losses,
    flow_target_widths,
    mobility_only,
)
from urbanrep.progress import format_seconds, start_progress
from urbanrep.safe_files import load_weights_only
from urbanrep.volumes import DEFAULT_VOLUME_SCALES
from urbanrep.written import COLUMNS_ATTR

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LOSS_CSV = "loss.csv"
EMBEDDINGS = "embeddings.parquet"
FUSION_WEIGHTS = "fusion_weights.parquet"
MODEL_FILE = "model.pt"

#: Seconds between two progress lines at most (a line also comes every ``log_every`` epochs).
LOG_INTERVAL_S = 10.0

#: A full-graph epoch over fewer nodes + edges than this is too small for a second CPU thread
#: to pay: on two cores, NYC-180 (39,219 nodes + edges) trained 60 epochs in 6.0 s with one
#: thread and in 214 s with two while other processes kept the cores busy (OpenMP threads spin-wait
#: for each other). Above it (about 2,000 regions with NYC-180's modalities) the training may use
#: more threads, as many as the load average leaves cores free (see :func:`choose_threads`).
SMALL_GRAPH_WORK = 100_000


@dataclass(frozen=True)
class TrainConfig:
    """Training settings (mirrors :func:`train`).

    Attributes:
        epochs: Fixed budget of epochs (``"full"``: one full-graph step each; ``"minibatch"``:
            one pass over every region in sampled batches).
        mode: ``"full"`` (default): full-graph training, exact; ``"minibatch"``: neighbour-
            sampled mini-batches (:func:`urbanrep.minibatch.train_minibatch`, settings in a
            :class:`~urbanrep.minibatch.MiniBatchConfig`), for graphs whose full-graph step does
            not fit in memory, and the only mode that runs data-parallel on several processes.
        lr: AdamW learning rate.
        mobility_only_lr_scale: The learning rate of a model whose only modality is mobility is
            ``lr`` times this (:func:`learning_rate`; 1: the same rate as every model). 10 since
            round 2026-12-07af (experiments/DESIGN_SELECTION.md): on the development cities' two
            mobility-alone graphs a mobility-only model kept gaining with optimisation well past the
            300-epoch budget (Chicago-77 0.343 after 300 epochs, 0.400 after 1,000), which a higher
            rate buys at no extra cost (0.353 against 0.316 on fresh seeds); every other model
            loses at a higher rate (Singapore 0.658 against 0.679 at 3e-3), so it keeps ``lr``.
        weight_decay: AdamW weight decay.
        seed: Seeds parameter init, dropout and augmentations.
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        amp: bf16 autocast on CUDA (ignored on CPU).
        grad_clip: Max gradient norm (0: no clipping).
        checkpoint_every: Write a checkpoint every this many epochs (0: only at the end).
            Default 50: a killed 300-epoch run loses at most 50 epochs (NYC-180: about 6 s of
            training, one 3 MB file per checkpoint, ``keep_checkpoints`` kept).
        keep_checkpoints: Checkpoints kept on disk (older ones are deleted).
        early_stopping: Stop when the *training* loss has not improved by ``min_delta`` for
            ``patience`` epochs (off by default; no validation data is ever consulted).
        patience: See ``early_stopping``.
        min_delta: See ``early_stopping``.
        log_every: Log a progress line every this many epochs.
        deterministic: Ask PyTorch for deterministic kernels on CPU.
        num_threads: CPU threads PyTorch uses during this call (restored afterwards).
            0 (default): chosen by :func:`choose_threads`: ``OMP_NUM_THREADS`` when it is set,
            else one thread for small graphs (more cannot pay there, and on cores shared with
            other busy processes two OpenMP threads spin-waiting for each other made training
            10-35x slower), else up to the cores the load average leaves free.
        malloc: What the C allocator does with memory training frees (glibc only,
            :mod:`urbanrep.allocator`; results never change): ``"keep"`` keeps it in the process
            for the next step (least CPU: no page re-faulting; about 130 KiB per region);
            ``"release"`` maps every block of 1 MiB or more on its own and hands it back when
            freed (about 40 KiB per region, about 40 % more CPU at 30k regions); ``"auto"``
            (default): ``"keep"`` unless that would need more than half the available memory
            (then ``"release"``; mini-batch: ``"keep"``); ``"system"`` leaves glibc as it is. The environment variable ``URBANREP_MALLOC`` overrides it; a preloaded jemalloc,
            tcmalloc or mimalloc is never touched.
    """

    epochs: int = 300
    mode: Literal["full", "minibatch"] = "full"
    lr: float = 1e-3
    mobility_only_lr_scale: float = 10.0
    weight_decay: float = 1e-4
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    grad_clip: float = 1.0
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    early_stopping: bool = False
    patience: int = 50
    min_delta: float = 1e-4
    log_every: int = 50
    deterministic: bool = True
    num_threads: int = 0
    malloc: str = "auto"

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"TrainConfig.epochs must be >= 1, got {self.epochs}")
        if self.mode not in ("full", "minibatch"):
            raise ConfigError(f"TrainConfig.mode={self.mode!r}; use 'full' (default) or 'minibatch'")
        if self.lr <= 0 or self.weight_decay < 0 or self.mobility_only_lr_scale <= 0:
            raise ConfigError("TrainConfig.lr and mobility_only_lr_scale must be > 0 and weight_decay >= 0")
        if self.checkpoint_every < 0 or self.keep_checkpoints < 1 or self.patience < 1 or self.log_every < 1:
            raise ConfigError("TrainConfig.checkpoint_every >= 0, keep_checkpoints >= 1, patience >= 1 and "
                              "log_every >= 1 are required")
        if self.malloc not in MALLOC_POLICIES:
            raise ConfigError(f"TrainConfig.malloc={self.malloc!r}; use one of {', '.join(MALLOC_POLICIES)}")
        if self.num_threads < 0:
            raise ConfigError(f"TrainConfig.num_threads must be >= 0 (0: leave PyTorch's setting), "
                              f"got {self.num_threads}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"TrainConfig.device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")


#: TrainConfig fields that shape the optimisation trajectory: a resumed run must keep them.
TRAJECTORY_FIELDS = ("mode", "lr", "mobility_only_lr_scale", "weight_decay", "seed", "amp", "grad_clip", "early_stopping", "patience",
                     "min_delta", "deterministic")


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        model: The trained model (eval mode, on the training device).
        embeddings: ``[N, C]`` float32 region embeddings, rows in ``region_ids`` order.
        fusion_weights: ``[N, M]`` float32 fusion weights, columns in ``modalities`` order.
        modalities: Modalities the model used.
        region_ids: Region ids (graph node order).
        history: One dict per epoch: ``epoch``, ``total`` and each loss part.
        epochs_run: Last epoch trained.
        stopped_early: Whether early stopping ended training.
        wall_time_s: Seconds spent in this call.
        cpu_time_s: CPU seconds this process spent in this call (``time.process_time``; on a
            shared machine the honest measure of a run's cost).
        run_dir: Output folder, if any.
        columns: What the embedding's columns hold (:func:`urbanrep.written.layout_columns`; empty
            when unknown); written with them into ``embeddings.parquet``.
    """

    model: RegionModel
    embeddings: np.ndarray
    fusion_weights: np.ndarray
    modalities: tuple[str, ...]
    region_ids: list[Any]
    history: list[dict[str, float]] = field(default_factory=list)
    epochs_run: int = 0
    stopped_early: bool = False
    wall_time_s: float = 0.0
    cpu_time_s: float = 0.0
    run_dir: Path | None = None
    columns: list[dict[str, str]] = field(default_factory=list)

    def embeddings_frame(self) -> pd.DataFrame:
        """Embeddings as a DataFrame indexed by ``region_id`` (columns ``emb_000``...)."""
        return embeddings_frame(self.region_ids, self.embeddings, self.columns)

    def fusion_weights_frame(self) -> pd.DataFrame:
        """Fusion weights as a DataFrame indexed by ``region_id`` (one column per modality)."""
        return pd.DataFrame(self.fusion_weights, columns=list(self.modalities),
                            index=pd.Index(self.region_ids, name="region_id"))


def embeddings_frame(region_ids: list[Any], embeddings: np.ndarray,
                     columns: list[dict[str, str]] | None = None) -> pd.DataFrame:
    """``region_id``-indexed DataFrame with columns ``emb_000``, ``emb_001``...

    ``columns`` (what the columns hold, :func:`urbanrep.written.layout_columns`) goes into
    ``attrs[COLUMNS_ATTR]``, which pandas keeps in a Parquet file's metadata.
    """
    cols = [f"emb_{i:03d}" for i in range(embeddings.shape[1])]
    frame = pd.DataFrame(embeddings, columns=cols, index=pd.Index(region_ids, name="region_id"))
    if columns:
        frame.attrs[COLUMNS_ATTR] = list(columns)
    return frame


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; explicit CUDA without a GPU raises."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available; use device='cpu' or 'auto'")
    return dev


def config_to_dict(config: Any) -> dict[str, Any]:
    """A frozen (nested) config dataclass as plain JSON-able dicts."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def model_config_from_dict(d: dict[str, Any]) -> ModelConfig:
    """Inverse of :func:`config_to_dict` for :class:`ModelConfig`."""
    mods = d.get("modalities")
    return ModelConfig(
        # Models saved before an option existed were trained without it (its off value here).
        expert=ExpertConfig(**{"flow_inputs": 0, **d["expert"]}), moe=MoEConfig(**d["moe"]),
        fusion=FusionConfig(**{"prior": "none", **d["fusion"]}),
        loss=LossConfig(**{"feature_target": "log", "flow_components": 0, "solo_flow_components": 0, **d["loss"]}),
        uniform_experts=d["uniform_experts"],
        modalities=tuple(mods) if mods is not None else None, projection_channels=d["projection_channels"],
        checkpoint_experts=bool(d.get("checkpoint_experts", False)), ensemble=int(d.get("ensemble", 1)),
        ensemble_output=str(d.get("ensemble_output", "concat")),
        output_smoothing=float(d.get("output_smoothing", 0.0)),
        output_scales=int(d.get("output_scales", 0)),
        output_scale_regions=int(d.get("output_scale_regions", 0)),
        output_position=int(d.get("output_position", 0)),
        output_norm=str(d.get("output_norm", "none")),
        output_variance=float(d.get("output_variance", 1.0)),
        output_volumes=bool(d.get("output_volumes", False)),
        volume_scales=tuple(d.get("volume_scales", DEFAULT_VOLUME_SCALES)),
        output_counts=str(d.get("output_counts", "none")),
        output_counts_skip=tuple(d.get("output_counts_skip", ())),
        output_counts_shares=tuple(d.get("output_counts_shares", ())),
    )


@contextlib.contextmanager
def _deterministic(enabled: bool) -> Iterator[None]:
    prev, prev_warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    if enabled:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev, warn_only=prev_warn)


def _graph_work(data: HeteroData) -> int:
    """Nodes + edges of a graph: the size that decides whether more CPU threads can pay."""
    nodes = sum(int(data[t].num_nodes or 0) for t in data.node_types)
    return nodes + sum(int(data[t].edge_index.size(1)) for t in data.edge_types if "edge_index" in data[t])


def choose_threads(data: HeteroData, tc: TrainConfig, device: torch.device) -> tuple[int, str]:
    """How many CPU threads PyTorch uses for this training, and why (the reason is logged).

    In order: ``tc.num_threads`` when set; on CUDA, PyTorch's setting (the CPU only feeds the
    GPU); ``OMP_NUM_THREADS`` when the environment sets it (PyTorch's setting follows it); one
    thread when the graph has fewer than :data:`SMALL_GRAPH_WORK` nodes + edges; otherwise
    PyTorch's setting capped at the cores the 1-minute load average leaves free (at least one).

    Returns:
        ``(threads, reason)``; ``threads == 0`` leaves PyTorch's setting as it is.
    """
    if tc.num_threads:
        return tc.num_threads, f"train.num_threads={tc.num_threads}"
    if device.type != "cpu":
        return 0, f"{device.type} device"
    if os.environ.get("OMP_NUM_THREADS"):
        return 0, f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"
    work = _graph_work(data)
    if work < SMALL_GRAPH_WORK:
        return 1, f"auto: {work:,} nodes + edges is too small a graph for more threads to pay"
    cores, load = cores_and_load()
    free = min(torch.get_num_threads(), free_of(cores, load))
    return free, f"auto: {work:,} nodes + edges on {cores} cores with load average {load:.1f}"


class ProgressLog:
    """Training progress lines with an ETA: at epoch 1, every ``log_every`` epochs, at least every
    :data:`LOG_INTERVAL_S` seconds and at the last epoch.

    Args:
        total: The last epoch of the budget.
        start: Epochs already trained (resume).
        log_every: Epoch interval of the regular lines.
        logger: Where the lines go (INFO).
    """

    def __init__(self, total: int, start: int, log_every: int, logger: logging.Logger = log) -> None:
        self.total, self.start, self.log_every, self.log = total, start, log_every, logger
        self.t0 = self.last = time.perf_counter()
        self.cpu0 = time.process_time()

    def epoch_done(self, epoch: int, loss: float, parts: dict[str, float], final: bool = False,
                   note: str = "") -> None:
        """Log a line for ``epoch`` when one is due (``final``: always); ``note`` follows the loss parts."""
        now = time.perf_counter()
        due = epoch == 1 or epoch % self.log_every == 0 or final or now - self.last >= LOG_INTERVAL_S
        if not due:
            return
        self.last = now
        done = epoch - self.start
        per_epoch = (now - self.t0) / max(done, 1)
        left = 0 if final else self.total - epoch
        self.log.info("epoch %d/%d loss %.4f %s | %.3f s/epoch, %s elapsed, ETA %s", epoch, self.total, loss,
                      " ".join([*(f"{k}={v:.4f}" for k, v in parts.items()), *([note] if note else [])]), per_epoch,
                      format_seconds(now - self.t0), format_seconds(left * per_epoch))

    def cpu_seconds(self) -> float:
        """CPU seconds (all threads of this process) since the loop started."""
        return time.process_time() - self.cpu0


@contextlib.contextmanager
def _num_threads(num: int) -> Iterator[None]:
    prev = torch.get_num_threads()
    if num:
        torch.set_num_threads(num)
    try:
        yield
    finally:
        if num:
            torch.set_num_threads(prev)


def _model_identity(model_config: dict[str, Any]) -> dict[str, Any]:
    """The model configuration minus switches that do not change results (may differ on resume)."""
    return {k: v for k, v in model_config.items() if k != "checkpoint_experts"}


def _trajectory_config(tc: TrainConfig) -> dict[str, Any]:
    return {k: getattr(tc, k) for k in TRAJECTORY_FIELDS}


def _checkpoints(run_dir: Path) -> list[Path]:
    return sorted((run_dir / CHECKPOINT_DIR).glob("epoch_*.pt"))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """Path of the newest checkpoint in ``run_dir/checkpoints`` (None if there is none)."""
    found = _checkpoints(Path(run_dir))
    return found[-1] if found else None


def _torch_save_atomic(obj: Any, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes_atomic(path, buf.getvalue())


def _write_loss_csv(path: Path, history: list[dict[str, float]], columns: list[str]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)


def _append_loss_row(path: Path, row: dict[str, float], columns: list[str]) -> None:
    with path.open("a", newline="") as fh:
        csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore").writerow(row)


def check_resumable(path: Path, ckpt: dict[str, Any], mc: ModelConfig, tc: TrainConfig,
                    metadata: GraphMetadata, num_regions: int) -> None:
    """Refuse a checkpoint written by another run (model, seed, trajectory settings or graph).

    Args:
        path: The checkpoint file (named in the errors).
        ckpt: Its contents.
        mc: The model configuration of the resuming call.
        tc: The training configuration of the resuming call.
        metadata: Modalities and feature widths of the graph being resumed on.
        num_regions: Regions of that graph.

    Raises:
        ConfigError: naming what differs and how to proceed.
    """
    if _model_identity(json.loads(ckpt["model_config"])) != _model_identity(config_to_dict(mc)):
        raise ConfigError(f"cannot resume from {path}: it was trained with a different model "
                          "configuration; use the same config or start a new run_dir")
    if int(ckpt["seed"]) != tc.seed:
        raise ConfigError(f"cannot resume from {path}: seed {ckpt['seed']} != {tc.seed}")
    if "train_config" in ckpt:
        saved = json.loads(ckpt["train_config"])
        changed = {k: (saved[k], v) for k, v in _trajectory_config(tc).items() if k in saved and saved[k] != v}
        if changed:
            raise ConfigError(f"cannot resume from {path}: TrainConfig fields changed "
                              f"{ {k: f'{a!r} -> {b!r}' for k, (a, b) in changed.items()} }; only epochs, "
                              "checkpointing, logging, device and threads may change on resume")
    if "metadata" in ckpt and ckpt["metadata"] != json.dumps(metadata.to_dict(), sort_keys=True):
        raise ConfigError(f"cannot resume from {path}: it was trained on a graph with other modalities "
                          f"or feature widths ({ckpt['metadata']}); resume on the same graph")
    if "num_regions" in ckpt and int(ckpt["num_regions"]) != num_regions:
        raise ConfigError(f"cannot resume from {path}: it was trained on {ckpt['num_regions']} regions, "
                          f"this graph has {num_regions}; resume on the same graph")


def read_checkpoint(run_dir: Path, mc: ModelConfig, tc: TrainConfig, metadata: GraphMetadata,
                    num_regions: int) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint of ``run_dir`` after :func:`check_resumable` (None when there is none).

    Raises:
        UrbanRepError: the file cannot be read (names it).
        ConfigError: it belongs to another run.
    """
    path = latest_checkpoint(run_dir)
    if path is None:
        return None
    ckpt = load_weights_only(path, "checkpoint", "delete it to resume from the one before, or start a new run_dir")
    if not isinstance(ckpt, dict):
        raise UrbanRepError(f"checkpoint {path} holds a {type(ckpt).__name__}, not an urbanrep checkpoint; delete it "
                            "to resume from the one before, or start a new run_dir")
    check_resumable(path, ckpt, mc, tc, metadata, num_regions)
    return path, ckpt


@dataclass
class EarlyStopping:
    """Training-loss early stopping state (checkpointed with the run).

    Attributes:
        best: Lowest epoch loss so far.
        stale: Epochs since ``best`` improved by more than ``min_delta``.
        stopped: Whether training has stopped.
    """

    best: float = math.inf
    stale: int = 0
    stopped: bool = False

    def update(self, loss: float, tc: TrainConfig, epoch: int) -> bool:
        """Account for one epoch's loss; returns ``stopped`` (always False when switched off)."""
        if not tc.early_stopping:
            return False
        if loss < self.best - tc.min_delta:
            self.best, self.stale = loss, 0
        else:
            self.stale += 1
            if self.stale >= tc.patience:
                self.stopped = True
                log.info("early stopping at epoch %d: training loss flat for %d epochs", epoch, tc.patience)
        return self.stopped

    def state(self) -> dict[str, Any]:
        """The checkpoint entries."""
        return {"best": self.best, "stale": self.stale, "stopped": self.stopped}

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any]) -> EarlyStopping:
        """Inverse of :meth:`state`."""
        return cls(float(ckpt["best"]), int(ckpt["stale"]), bool(ckpt["stopped"]))


class LossLog:
    """``run_dir/loss.csv``: one row per epoch, appended as training goes.

    On resume the file is rewritten from the checkpoint's history, dropping rows of epochs
    trained after that checkpoint (they will be trained again).

    Args:
        run_dir: The run folder (None: nothing is written).
        history: Rows already trained (from a checkpoint).
    """

    def __init__(self, run_dir: Path | None, history: list[dict[str, float]]) -> None:
        self.path = run_dir / LOSS_CSV if run_dir is not None else None
        self.columns: list[str] | None = None
        if self.path is not None and history:
            self.columns = list(history[0].keys())
            _write_loss_csv(self.path, history, self.columns)

    def append(self, row: dict[str, float]) -> None:
        """Add one epoch's row (the first row fixes the columns)."""
        if self.path is None:
            return
        if self.columns is None:
            self.columns = list(row.keys())
            _write_loss_csv(self.path, [row], self.columns)
        else:
            _append_loss_row(self.path, row, self.columns)


def checkpoint_state(epoch: int, mc: ModelConfig, tc: TrainConfig, metadata: GraphMetadata, num_regions: int,
                     model: RegionModel, opt: torch.optim.Optimizer, history: list[dict[str, float]],
                     stopping: EarlyStopping) -> dict[str, Any]:
    """The entries every checkpoint holds: identity, weights, optimiser, history, early stopping.

    Each training loop adds its RNG states (and, for mini-batches, the sampler's) before
    :func:`save_checkpoint`.
    """
    return {
        "epoch": epoch, "seed": tc.seed, "model_config": json.dumps(config_to_dict(mc), sort_keys=True),
        "train_config": json.dumps(_trajectory_config(tc)),
        "metadata": json.dumps(metadata.to_dict(), sort_keys=True),
        "num_regions": num_regions,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": opt.state_dict(),
        "history": history, **stopping.state(),
    }


def save_checkpoint(run_dir: Path, state: dict[str, Any], keep: int) -> Path:
    """Write ``run_dir/checkpoints/epoch_NNNNNN.pt`` atomically; keep the newest ``keep`` files."""
    path = run_dir / CHECKPOINT_DIR / f"epoch_{int(state['epoch']):06d}.pt"
    _torch_save_atomic(state, path)
    for old in _checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def write_run_outputs(result: TrainResult, run_dir: Path, tc: TrainConfig) -> None:
    """``embeddings.parquet``, ``fusion_weights.parquet`` and ``model.pt`` of a finished run (atomic)."""
    write_parquet_atomic(result.embeddings_frame().reset_index(), run_dir / EMBEDDINGS)
    write_parquet_atomic(result.fusion_weights_frame().reset_index(), run_dir / FUSION_WEIGHTS)
    save_model(result.model, run_dir / MODEL_FILE, tc)


def save_model(model: RegionModel, path: str | Path, train_config: TrainConfig | None = None) -> None:
    """Write the model's weights, configs and graph metadata to ``path`` atomically."""
    payload = {
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "model_config": json.dumps(config_to_dict(model.config)),
        "metadata": json.dumps(model.metadata.to_dict()),
        "train_config": json.dumps(config_to_dict(train_config)) if train_config is not None else None,
    }
    _torch_save_atomic(payload, Path(path))


def load_model(path: str | Path, device: str = "cpu") -> RegionModel:
    """Load a model written by :func:`save_model` (weights-only unpickling)."""
    path = Path(path)
    if not path.exists():
        raise UrbanRepError(f"model file {path} does not exist; train first (urbanrep train)")
    payload = load_weights_only(path, "model file", "retrain to recreate it", map_location=device)
    if not isinstance(payload, dict) or not {"state_dict", "model_config", "metadata"} <= set(payload):
        raise UrbanRepError(f"{path} is not an urbanrep model file (no state_dict / model_config / metadata); "
                            "retrain to recreate it")
    model = RegionModel(model_config_from_dict(json.loads(payload["model_config"])),
                        GraphMetadata.from_dict(json.loads(payload["metadata"])))
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval()


def _amp_context(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager[Any]:
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


#: Called between ``backward`` and the optimiser step with the model and the local loss; averages
#: gradients over data-parallel ranks and returns the loss averaged over them.
GradientSync = Callable[[RegionModel, Tensor], Tensor]


def learning_rate(tc: TrainConfig, modalities: Sequence[str]) -> float:
    """The learning rate of a model of ``modalities``: ``tc.lr``, times ``tc.mobility_only_lr_scale``
    when mobility is its only modality."""
    return tc.lr * tc.mobility_only_lr_scale if mobility_only(modalities) else tc.lr


def make_optimiser(model: RegionModel, tc: TrainConfig) -> torch.optim.Optimizer:
    """The AdamW optimiser every training path uses (whole graph, mini-batch, data-parallel).

    ``foreach=True`` updates all parameters with a few multi-tensor kernels instead of one small
    kernel per parameter and operation: on CPU, where PyTorch's default is the per-parameter loop,
    that saves about 5 % of a default NYC-180 run and gives bit-identical weights (checked on the
    default model). Checkpoints are the same either way.
    """
    lr = learning_rate(tc, model.modalities)
    if lr != tc.lr:
        log.info("a mobility-only model: learning rate %g (train.lr %g x train.mobility_only_lr_scale %g)",
                 lr, tc.lr, tc.mobility_only_lr_scale)
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=tc.weight_decay, foreach=True)


def optimisation_step(model: RegionModel, data: HeteroData, opt: torch.optim.Optimizer, gen: torch.Generator,
                      tc: TrainConfig, device: torch.device, where: str,
                      sync: GradientSync | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """One gradient step of the training objective on ``data`` (a whole graph or a sampled subgraph).

    Args:
        model: The model (switched to training mode here).
        data: Graph on ``device``.
        opt: Optimiser of ``model``'s parameters.
        gen: Seeded generator for augmentations and node sampling.
        tc: Training settings (autocast, gradient clipping).
        device: Where ``model`` and ``data`` live.
        where: Named in the error when the loss is not finite (e.g. ``"epoch 12"``).
        sync: Data parallelism: averages the gradients over ranks after ``backward`` (and
            before clipping, so every rank clips and steps alike) and returns the mean loss,
            which is checked for NaN/inf on every rank at once.

    Returns:
        ``(total, parts)`` as :meth:`RegionModel.loss` returns them (this rank's loss).

    Raises:
        UrbanRepError: the loss became NaN or infinite (on any rank, with ``sync``).
    """
    model.train()
    opt.zero_grad(set_to_none=True)
    results = []
    for member in model.step_members():  # an ensemble member by member: one member's activations at a time
        with _amp_context(device, tc.amp):
            member_total, member_parts = member.loss(data, member(member.training_view(data, gen)), gen)
        if sync is None and not torch.isfinite(member_total.detach()):
            raise UrbanRepError(f"training loss became {float(member_total.detach())} at {where}; lower "
                                "TrainConfig.lr or check the graph features for extreme values")
        member_total.backward()
        results.append((member_total.detach(), member_parts))
    total, parts = combine_member_losses(results)
    checked = total.detach()
    if sync is not None:
        checked = sync(model, checked)
        if not torch.isfinite(checked):
            raise UrbanRepError(f"training loss became {float(checked)} (mean over ranks) at {where}; lower "
                                "TrainConfig.lr or check the graph features for extreme values")
    if tc.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
    opt.step()
    return total, parts


def train(data: HeteroData, model_config: ModelConfig | None = None, train_config: TrainConfig | None = None,
          run_dir: str | Path | None = None, resume: bool = False, minibatch_config: Any = None) -> TrainResult:
    """Train a :class:`RegionModel` on ``data`` and return its embeddings.

    Args:
        data: A region graph (validated here).
        model_config: Model configuration (defaults when None).
        train_config: Training configuration (defaults when None). With ``mode="minibatch"``
            the call goes to :func:`urbanrep.minibatch.train_minibatch`.
        run_dir: Folder for checkpoints, ``loss.csv``, embeddings and fusion weights
            (nothing is written when None).
        resume: Continue from the latest checkpoint in ``run_dir`` (a fresh start when there
            is none). The model configuration and the seed must match the checkpoint's; the
            epoch budget may be larger.
        minibatch_config: A :class:`urbanrep.minibatch.MiniBatchConfig` (``mode="minibatch"``
            only; defaults when None).

    Returns:
        A :class:`TrainResult`.

    Raises:
        ConfigError: on resume with a different model configuration or seed, or resume
            without ``run_dir``.
        UrbanRepError: when the loss becomes NaN/inf (the message names the epoch).
    """
    mc = model_config or ModelConfig()
    tc = train_config or TrainConfig()
    try:
        regions = data["region"].num_nodes if tc.mode == "full" and "region" in data.node_types else None
        tune_allocator(tc.malloc, int(regions) if regions is not None else None)
    except ValueError as exc:  # a bad URBANREP_MALLOC
        raise ConfigError(str(exc)) from exc
    if tc.mode == "minibatch":
        from urbanrep.minibatch import train_minibatch

        return train_minibatch(data, mc, tc, minibatch_config, run_dir=run_dir, resume=resume)
    if resume and run_dir is None:
        raise ConfigError("resume=True needs a run_dir holding checkpoints")
    if env_world_size() > 1 or current_ranks().distributed:
        raise ConfigError("full-graph training runs in one process; for data-parallel training over several "
                          "processes set train.mode=minibatch (--set train.mode=minibatch)")
    validate_graph(data)
    # the city's flow-profile components, kept in augmented views
    data = with_flow_profile(data, flow_inputs_for(mc, data), flow_target_widths(mc, data))
    t0, cpu0 = time.perf_counter(), time.process_time()
    device = resolve_device(tc.device)
    run_path = Path(run_dir) if run_dir is not None else None
    threads, why = choose_threads(data, tc, device)
    with _deterministic(tc.deterministic and device.type == "cpu"), _num_threads(threads):
        log.info("training %d epochs on %s with %d torch thread%s (%s; --threads N or train.num_threads "
                 "overrides)", tc.epochs, device, torch.get_num_threads(), "" if torch.get_num_threads() == 1 else "s",
                 why)
        result = _train(data, mc, tc, device, run_path, resume)
    result.wall_time_s = time.perf_counter() - t0
    result.cpu_time_s = time.process_time() - cpu0
    log.info("trained %d epochs in %.1f s on %s (%.1f CPU seconds)", result.epochs_run, result.wall_time_s, device,
             result.cpu_time_s)
    return result


def _train(data: HeteroData, mc: ModelConfig, tc: TrainConfig, device: torch.device, run_dir: Path | None,
           resume: bool) -> TrainResult:
    torch.manual_seed(tc.seed)
    gen = torch.Generator(device=device)
    gen.manual_seed(tc.seed)
    if device.type != "cpu":
        data = data.clone().to(device)  # HeteroData.to moves in place: keep the caller's graph where it is
    metadata = GraphMetadata.from_data(data)
    num_regions = int(data["region"].num_nodes)
    model = RegionModel(mc, metadata).to(device)
    opt = make_optimiser(model, tc)
    history: list[dict[str, float]] = []
    start, stopping = 0, EarlyStopping()
    found = read_checkpoint(run_dir, mc, tc, metadata, num_regions) if (resume and run_dir is not None) else None
    if found is not None:
        ckpt_path, ckpt = found
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["rng_cpu"])
        if device.type == "cuda" and ckpt.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(ckpt["rng_cuda"], device)
        gen.set_state(ckpt["rng_gen"].to(gen.get_state().device))
        history = [dict(r) for r in ckpt["history"]]
        start, stopping = int(ckpt["epoch"]), EarlyStopping.from_checkpoint(ckpt)
        log.info("resuming from %s (epoch %d)", ckpt_path, start)
    elif resume:
        log.info("no checkpoint in %s: starting from scratch", run_dir)
    loss_log = LossLog(run_dir, history)  # on resume: drops rows written after the checkpoint

    def checkpoint(epoch: int) -> None:
        assert run_dir is not None
        state = checkpoint_state(epoch, mc, tc, metadata, num_regions, model, opt, history, stopping)
        state.update(rng_cpu=torch.get_rng_state(), rng_gen=gen.get_state().cpu(),
                     rng_cuda=torch.cuda.get_rng_state(device) if device.type == "cuda" else None)
        save_checkpoint(run_dir, state, tc.keep_checkpoints)

    bar = start_progress("training", tc.epochs - start)
    progress = ProgressLog(tc.epochs, start, tc.log_every)
    for epoch in range(start + 1, tc.epochs + 1):
        if stopping.stopped:
            break
        total, parts = optimisation_step(model, data, opt, gen, tc, device, f"epoch {epoch}")
        row: dict[str, float] = {"epoch": epoch, "total": float(total.detach()),
                                  **{k: float(v) for k, v in parts.items()}}
        history.append(row)
        bar.update(1, loss=f"{row['total']:.4f}")
        loss_log.append(row)
        stopping.update(row["total"], tc, epoch)
        progress.epoch_done(epoch, row["total"], {k: row[k] for k in parts},
                            final=epoch == tc.epochs or stopping.stopped)
        if run_dir is not None and tc.checkpoint_every and epoch % tc.checkpoint_every == 0:
            checkpoint(epoch)
    bar.close()
    last = int(history[-1]["epoch"]) if history else 0
    if run_dir is not None and last and not (run_dir / CHECKPOINT_DIR / f"epoch_{last:06d}.pt").exists():
        checkpoint(last)

    model.eval()
    with torch.no_grad(), _amp_context(device, tc.amp):
        out = model(data)
    emb = model.final_embedding(out.embedding.float().cpu().numpy().astype(np.float32), data)
    weights = out.fusion_weights.float().cpu().numpy().astype(np.float32)
    result = TrainResult(model=model, embeddings=emb, fusion_weights=weights, modalities=model.modalities,
                         region_ids=list(data.region_ids), history=history, epochs_run=last,
                         stopped_early=stopping.stopped, run_dir=run_dir,
                         columns=model.written_columns(data))
    if run_dir is not None:
        write_run_outputs(result, run_dir, tc)
    return result
