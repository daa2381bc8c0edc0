"""Mini-batch training on region subgraphs, for graphs too large for one full-graph step.

:func:`train` in :mod:`urbanrep.train` stays full-graph (the default, exact and resumable).
:func:`train_minibatch` trains the same :class:`~urbanrep.network.RegionModel` on seeded batches
of regions; each batch's induced sub-``HeteroData`` (same schema: region features, masks, every
edge type restricted to the batch's regions, plus the street-view images of those regions) goes
through the model's own ``forward`` and ``loss``. One epoch is one pass over all regions. Two
samplers (:class:`MiniBatchConfig`, ``sampler``):

* ``"partition"`` (default; :mod:`urbanrep.partition`): the regions are cut once into compact
  spatial blocks of about ``partition_size`` regions; each epoch every batch is a random union of
  blocks holding about ``batch_size`` regions (ClusterGCN-style: edges between the blocks of a
  batch are kept), so every region is a seed exactly once per epoch and an epoch processes each
  region once. ``num_neighbors`` (default ``()``) adds a sampled halo of context regions; the
  losses are then taken on the seeds only.
* ``"neighbor"``: ``batch_size`` random seeds grown by ``len(num_neighbors)`` hops over the union
  of every region-region edge type (both directions), keeping at most ``num_neighbors[h]``
  neighbours per node at hop ``h`` (GraphSAGE-style); the loss is taken over the whole sampled
  subgraph. OD and similarity edges are long-range, so a few hops reach most of a city: at 10k
  regions fan-out 10/10/5 made an epoch cost about ten full-graph epochs.

Either way the contrastive negatives of a batch are the regions it holds. The samplers are pure
numpy (CSR + vectorised per-node sampling, coordinate bisection), so they need neither
``pyg-lib`` nor ``torch-sparse``. Inference is one full-graph forward pass without gradients
(``"full"``, exact; memory is activations only) or, for graphs whose forward pass itself does
not fit, batched over the sampler's batches with their context (``"sampled"``, approximate: seed
rows only are kept).

Users reach it through ``TrainConfig(mode="minibatch")`` (``--set train.mode=minibatch``, with
the ``minibatch:`` section of a run config holding :class:`MiniBatchConfig`), through
:func:`urbanrep.train.train`, :class:`urbanrep.UrbanRep` and the CLI. With a ``run_dir`` it
writes the same files as full-graph training (``checkpoints/epoch_NNNNNN.pt`` at epoch ends,
``loss.csv`` growing by one row per epoch, embeddings, fusion weights, ``model.pt``), and
``resume=True`` continues from the newest checkpoint, restoring the weights, the optimiser, the
torch RNGs and the sampler's numpy RNGs, so an interrupted and resumed run ends with the same
embedding as an uninterrupted one (on CPU). Checkpoints are taken at epoch ends only.

**Data parallelism.** Inside a ``torch.distributed`` process group (torchrun, or
``--nproc N``; see :mod:`urbanrep.distributed`) every rank draws the same batches each epoch
(the same permutation of the regions or of the blocks) and takes every ``world_size``-th batch
(the last round wraps around so that every rank takes the same number of steps); gradients are
averaged over ranks after each backward pass, so the ranks keep identical parameters. Rank 0
writes every file. Neighbour sampling, halos, loss seeds, dropout and augmentations use one RNG
stream per rank; rank 0's streams are those of a single-process run. The number of processes is part of a run's trajectory: resuming with
another one continues from the checkpoint, but re-seeds the per-rank streams (logged).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch_geometric.data import HeteroData

from urbanrep.distributed import GradientAverager, Ranks, all_gather, broadcast, process_group, rank_device
from urbanrep.errors import ConfigError, UrbanRepError
from urbanrep.experts.mobility import flow_inputs_for, with_flow_profile
from urbanrep.graphs.schema import IMAGE, IMAGE_IN_REGION, REGION, validate_graph
from urbanrep.network import GraphMetadata, ModelConfig, RegionModel, flow_target_widths
from urbanrep.partition import PartitionSampler, edge_cut
from urbanrep.progress import start_progress
from urbanrep.subgraph import InducedSubgraphs, ranges
from urbanrep.train import (
    EarlyStopping,
    LossLog,
    ProgressLog,
    TrainConfig,
    TrainResult,
    _amp_context,
    _deterministic,
    _num_threads,
    checkpoint_state,
    make_optimiser,
    optimisation_step,
    read_checkpoint,
    resolve_device,
    save_checkpoint,
    write_run_outputs,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MiniBatchConfig:
    """Mini-batch settings (used with a :class:`~urbanrep.train.TrainConfig` in ``mode="minibatch"``).

    Attributes:
        sampler: ``"partition"`` (default): every batch is a random union of compact spatial
            blocks of about ``partition_size`` regions, each region a seed exactly once per epoch
            (:class:`urbanrep.partition.PartitionSampler`); an epoch costs about one full-graph
            epoch. ``"neighbor"``: random seed regions grown by sampled hops over every edge type
            (GraphSAGE-style), the loss over the whole sampled subgraph; with long-range OD and
            similarity edges each batch reaches most of a city.
        batch_size: Seed regions per step (per rank in data-parallel training).
        partition_size: Regions per spatial block (``"partition"`` only).
        num_neighbors: Neighbours kept per node at each hop (``-1``: all). ``"neighbor"``: the
            sampled hops (default ``(10, 10, 5)``; the number of hops should cover the model's
            receptive field, expert layers + 1 for the spatial fusion). ``"partition"``: the
            halo of context regions around a batch's seeds (default ``()``: none; with a halo
            the losses are taken on the seeds only).
        loss_nodes: ``"partition"`` only: seed regions of a batch the losses are taken on (a
            random subset, drawn per batch). ``None`` (default): ``max(256, ceil(max_nodes /
            sqrt(B)))`` for ``B`` batches per epoch and the model's ``loss.max_nodes``, so that an
            epoch's dense ``[R, R]`` loss work is about one full-graph step's (a full-graph step
            takes its losses on ``max_nodes`` random regions); at 10k regions and the defaults
            (5 batches of ~2000 regions, 8 blocks each), 916 seeds per batch. Set it to
            ``batch_size`` for every seed.
        inference: ``"full"``: one exact full-graph forward pass without gradients;
            ``"sampled"``: batches of ``inference_batch_size`` seeds, each with its context
            (the sampler's hops or halo), seed rows kept.
        inference_batch_size: Seeds per inference batch (``"sampled"`` only).
    """

    sampler: Literal["partition", "neighbor"] = "partition"
    batch_size: int = 2048
    partition_size: int = 256
    num_neighbors: tuple[int, ...] | None = None
    loss_nodes: int | None = None
    inference: Literal["full", "sampled"] = "full"
    inference_batch_size: int = 4096

    def __post_init__(self) -> None:
        if self.sampler not in ("partition", "neighbor"):
            raise ConfigError(f"MiniBatchConfig.sampler={self.sampler!r}; use 'partition' (default) or 'neighbor'")
        hops = self.num_neighbors
        if hops is None:
            hops = (10, 10, 5) if self.sampler == "neighbor" else ()
        object.__setattr__(self, "num_neighbors", tuple(int(k) for k in hops))
        for name in ("batch_size", "partition_size", "inference_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"MiniBatchConfig.{name} must be an integer, got {value!r}")
            if value < 1:
                raise ConfigError(f"MiniBatchConfig.{name} must be >= 1, got {value}")
        if self.sampler == "neighbor" and not self.num_neighbors:
            raise ConfigError("MiniBatchConfig.num_neighbors=(): the neighbour sampler needs one entry per hop "
                              "(e.g. [10, 10, 5]); an empty halo is for sampler='partition'")
        if any(k == 0 or k < -1 for k in self.hops):
            raise ConfigError(f"MiniBatchConfig.num_neighbors={self.num_neighbors}: give one entry per hop, "
                              "each >= 1 or -1 (all neighbours)")
        if self.loss_nodes is not None and (isinstance(self.loss_nodes, bool) or not isinstance(self.loss_nodes, int)
                                            or self.loss_nodes < 2):
            raise ConfigError(f"MiniBatchConfig.loss_nodes={self.loss_nodes!r}: give an integer >= 2, or leave it "
                              "unset (null) for the automatic share of each batch")
        if self.inference not in ("full", "sampled"):
            raise ConfigError(f"MiniBatchConfig.inference={self.inference!r}; use 'full' or 'sampled'")

    @property
    def hops(self) -> tuple[int, ...]:
        """``num_neighbors`` as resolved for the sampler (never None)."""
        return self.num_neighbors or ()


#: Seed of the neighbour sampling of ``inference="sampled"`` (training's final embedding and
#: :meth:`urbanrep.UrbanRep.transform` sample alike).
INFERENCE_SEED = 0

#: MiniBatchConfig fields that shape the optimisation trajectory: a resumed run must keep them.
MINIBATCH_TRAJECTORY_FIELDS = ("sampler", "batch_size", "partition_size", "num_neighbors", "loss_nodes")


def _minibatch_identity(bc: MiniBatchConfig) -> dict[str, Any]:
    ident = {k: list(v) if isinstance(v, tuple) else v for k, v in
             ((k, getattr(bc, k)) for k in MINIBATCH_TRAJECTORY_FIELDS)}
    if bc.sampler == "neighbor":  # as checkpoints written before the partition sampler record it
        del ident["sampler"], ident["partition_size"], ident["loss_nodes"]
    return ident


class RegionSampler:
    """Seeded k-hop neighbour sampling over the union of a graph's region-region edges.

    Args:
        data: A region graph.
        num_neighbors: Neighbours kept per node at each hop (``-1``: all; ``()``: no hops, the
            seeds alone).
    """

    def __init__(self, data: HeteroData, num_neighbors: tuple[int, ...]) -> None:
        self.n = int(data[REGION].num_nodes)
        self.num_neighbors = tuple(num_neighbors)
        self.col = np.zeros(0, np.int64)  # neighbours of node r: col[ptr[r]:ptr[r+1]] (built only with hops)
        self.ptr = np.zeros(self.n + 1, np.int64)
        if self.num_neighbors:
            src, dst = [], []
            for et in data.edge_types:
                if et[0] == REGION and et[2] == REGION:
                    ei = data[et].edge_index.cpu().numpy()
                    src += [ei[0], ei[1]]
                    dst += [ei[1], ei[0]]
            s = np.concatenate(src) if src else np.zeros(0, np.int64)
            d = np.concatenate(dst) if dst else np.zeros(0, np.int64)
            key = np.unique(d.astype(np.int64) * self.n + s)
            key = key[(key // self.n) != (key % self.n)]
            self.col = (key % self.n).astype(np.int64)
            np.cumsum(np.bincount(key // self.n, minlength=self.n), out=self.ptr[1:])
        self.image_region: np.ndarray | None = None
        self._images = (np.zeros(0, np.int64), np.zeros(self.n + 1, np.int64))  # images by region (CSR)
        if IMAGE in data.node_types and IMAGE_IN_REGION in data.edge_types:
            ei = data[IMAGE_IN_REGION].edge_index.cpu().numpy()
            img_region = np.full(int(data[IMAGE].num_nodes), -1, np.int64)
            img_region[ei[0]] = ei[1]
            self.image_region = img_region
            owned = np.flatnonzero(img_region >= 0)
            ptr = np.zeros(self.n + 1, np.int64)
            np.cumsum(np.bincount(img_region[owned], minlength=self.n), out=ptr[1:])
            self._images = (owned[np.argsort(img_region[owned], kind="stable")], ptr)
        self._graph = data
        self._induced = InducedSubgraphs(data)

    def sample(self, seeds: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Sorted region positions of the sampled subgraph around ``seeds`` (seeds included)."""
        seen = np.zeros(self.n, dtype=bool)
        frontier = np.unique(np.asarray(seeds, dtype=np.int64))
        seen[frontier] = True
        parts = [frontier]
        for fanout in self.num_neighbors:
            if not len(frontier):
                break
            start = self.ptr[frontier]
            deg = self.ptr[frontier + 1] - start
            total = int(deg.sum())
            if not total:
                break
            offset = np.cumsum(deg) - deg
            group = np.repeat(np.arange(len(frontier)), deg)
            within = np.arange(total) - np.repeat(offset, deg)
            pos = np.repeat(start, deg) + within
            if fanout >= 0 and (deg > fanout).any():
                order = np.lexsort((rng.random(total), group))  # random order inside each node's list
                keep = within < fanout  # ``within`` is also the rank after the per-group shuffle
                pos = pos[order][keep]
            nbrs = self.col[pos]
            new = np.unique(nbrs[~seen[nbrs]])
            seen[new] = True
            parts.append(new)
            frontier = new
        return np.sort(np.concatenate(parts))

    def subgraph(self, data: HeteroData, nodes: np.ndarray) -> HeteroData:
        """The sub-``HeteroData`` induced by the sorted region positions ``nodes`` (same schema)."""
        subset = {REGION: nodes}
        if self.image_region is not None:
            order, ptr = self._images
            subset[IMAGE] = np.sort(order[ranges(ptr, nodes)])
        if data is self._graph:
            sub = self._induced(subset)
        else:
            sub = data.subgraph({k: torch.from_numpy(v) for k, v in subset.items()})
        ids = getattr(data, "region_ids", None)
        if ids is not None:
            sub.region_ids = [ids[i] for i in nodes.tolist()]
        return sub


class BatchSampler:
    """An epoch's seed batches and each batch's subgraph, for either sampler of a :class:`MiniBatchConfig`.

    Args:
        data: A region graph.
        config: The mini-batch settings.
    """

    def __init__(self, data: HeteroData, config: MiniBatchConfig) -> None:
        self.config = config
        self.regions = RegionSampler(data, config.hops)
        self.n = self.regions.n
        self.partitions = (PartitionSampler(data, config.partition_size, config.batch_size)
                           if config.sampler == "partition" else None)

    def epoch_batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        """The seed batches of one epoch (together every region exactly once), drawn with ``rng``."""
        if self.partitions is not None:
            return self.partitions.epoch_batches(rng)
        perm = rng.permutation(self.n)
        return [perm[i:i + self.config.batch_size] for i in range(0, self.n, self.config.batch_size)]

    def inference_batches(self) -> list[np.ndarray]:
        """Seed batches covering every region once, in a fixed order (``inference="sampled"``)."""
        size = self.config.inference_batch_size
        if self.partitions is not None:
            return self.partitions.inference_batches(size)
        return [np.arange(s, min(s + size, self.n)) for s in range(0, self.n, size)]

    def loss_nodes(self, max_nodes: int) -> int | None:
        """Seeds per batch the losses are taken on (see ``MiniBatchConfig.loss_nodes``; None: all)."""
        if self.partitions is None:
            return None
        if self.config.loss_nodes is not None:
            return self.config.loss_nodes
        batches = math.ceil(self.partitions.num_parts / self.partitions.parts_per_batch)
        return max(256, math.ceil(max_nodes / math.sqrt(batches)))

    def batch(self, data: HeteroData, seeds: np.ndarray, rng: np.random.Generator,
              loss_nodes: int | None = None) -> tuple[HeteroData, np.ndarray]:
        """``(subgraph, nodes)``: the seeds with their context and the sorted region positions it holds.

        The partition sampler marks the regions the losses are taken on in
        ``sub["region"].seed_mask`` ``[n]`` (the model's loss then uses those rows only): the
        seeds, or ``loss_nodes`` of them drawn with ``rng`` when the batch has more seeds. Where
        every region of the batch is one, no mask is set.
        """
        nodes = self.regions.sample(seeds, rng)
        if self.partitions is not None and len(nodes) == self.n and (loss_nodes is None or loss_nodes >= self.n):
            return data, nodes  # the whole graph: the same tensors, so its cached graph constants are reused
        sub = self.regions.subgraph(data, nodes)
        if self.partitions is not None:
            chosen = seeds
            if loss_nodes is not None and len(seeds) > loss_nodes:
                chosen = np.sort(rng.choice(seeds, loss_nodes, replace=False))
            if len(chosen) < len(nodes):
                mask = np.zeros(len(nodes), dtype=bool)
                mask[np.searchsorted(nodes, chosen)] = True
                sub[REGION].seed_mask = torch.from_numpy(mask)
        return sub, nodes


def _share_batches(batches: list[np.ndarray], ranks: Ranks) -> list[np.ndarray]:
    """This rank's batches of one epoch: every ``world_size``-th batch of the shared list.

    With ``B`` batches each rank takes ``ceil(B / world_size)`` of them; the last round wraps
    around to the first batches so every rank steps the same number of times.
    """
    steps = math.ceil(len(batches) / ranks.world_size)
    return [batches[(s * ranks.world_size + ranks.rank) % len(batches)] for s in range(steps)]


def _rank_batches(n: int, batch_size: int, rng: np.random.Generator, ranks: Ranks) -> list[np.ndarray]:
    """The neighbour sampler's batches of this rank: a permutation of ``range(n)`` shared by every rank."""
    perm = rng.permutation(n)
    return _share_batches([perm[i:i + batch_size] for i in range(0, n, batch_size)], ranks)


def _rank_seed(seed: int, *key: int) -> int:
    """A 63-bit seed derived from ``seed`` and ``key`` (independent streams per rank / epoch)."""
    return int(np.random.SeedSequence([seed, *key]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def _rng_state(rng: np.random.Generator) -> str:
    return json.dumps(rng.bit_generator.state)


def _set_rng_state(rng: np.random.Generator, state: str) -> None:
    rng.bit_generator.state = json.loads(state)


def train_minibatch(data: HeteroData, model_config: ModelConfig | None = None,
                    train_config: TrainConfig | None = None,
                    minibatch_config: MiniBatchConfig | None = None,
                    run_dir: str | Path | None = None, resume: bool = False) -> TrainResult:
    """Train a :class:`RegionModel` on mini-batches (partition or neighbour sampler) and embed every region.

    Uses every field of ``train_config`` as :func:`urbanrep.train.train` does (``mode`` is
    taken to be ``"minibatch"``); one epoch is one pass over all regions in batches of
    about ``minibatch_config.batch_size`` seeds, and ``history`` has one row per epoch (each loss
    part averaged over the epoch's batches on every rank). Inside a ``torch.distributed``
    process group (torchrun or :func:`urbanrep.distributed.spawn`; joined here from the
    environment when it is not initialised yet) the epoch's batches are shared out among the
    ranks and gradients averaged; every rank returns the same result and rank 0 writes the files.

    Args:
        data: A region graph (validated here); it stays where it is, batches are moved to the
            training device one at a time.
        model_config: Model configuration (defaults when None).
        train_config: Training configuration (defaults when None).
        minibatch_config: Batch size, fan-outs and inference mode (defaults when None).
        run_dir: Folder for checkpoints, ``loss.csv``, embeddings, fusion weights and
            ``model.pt`` (nothing is written when None).
        resume: Continue from the newest checkpoint in ``run_dir`` (a fresh start when there is
            none). Model configuration, seed, optimisation settings, ``batch_size`` and
            ``num_neighbors`` must match the checkpoint's; the epoch budget may be larger.

    Returns:
        A :class:`~urbanrep.train.TrainResult` (embeddings ``[N, C]``, fusion weights ``[N, M]``).

    Raises:
        ConfigError: resume without ``run_dir``, or from another run's checkpoint.
        UrbanRepError: the loss becomes NaN/inf (names the epoch and batch).
    """
    mc = model_config or ModelConfig()
    tc = dataclasses.replace(train_config or TrainConfig(), mode="minibatch")
    bc = minibatch_config or MiniBatchConfig()
    if resume and run_dir is None:
        raise ConfigError("resume=True needs a run_dir holding checkpoints")
    validate_graph(data)
    # the city's flow-profile components, sliced into every batch (a batch's own would be another basis)
    data = with_flow_profile(data, flow_inputs_for(mc, data), flow_target_widths(mc, data))
    t0, cpu0 = time.perf_counter(), time.process_time()
    device = resolve_device(tc.device)
    run_path = Path(run_dir) if run_dir is not None else None
    with (process_group(device) as ranks, _deterministic(tc.deterministic and device.type == "cpu"),
          _num_threads(tc.num_threads)):
        result = _train_minibatch(data, mc, tc, bc, rank_device(device), run_path, resume, ranks)
    result.wall_time_s = time.perf_counter() - t0
    result.cpu_time_s = time.process_time() - cpu0
    log.info("mini-batch trained %d epochs in %.1f s on %s (rank %d of %d)", result.epochs_run,
             result.wall_time_s, device, ranks.rank, ranks.world_size)
    return result


def _train_minibatch(data: HeteroData, mc: ModelConfig, tc: TrainConfig, bc: MiniBatchConfig,
                     device: torch.device, run_dir: Path | None, resume: bool, ranks: Ranks) -> TrainResult:
    torch.manual_seed(tc.seed)  # the same initial weights on every rank
    metadata = GraphMetadata.from_data(data)
    model = RegionModel(mc, metadata).to(device)
    opt = make_optimiser(model, tc)
    sampler = BatchSampler(data, bc)
    n = sampler.n
    loss_nodes = sampler.loss_nodes(mc.loss.max_nodes)
    if ranks.is_main and sampler.partitions is not None:
        p = sampler.partitions
        log.info("partition sampler: %d spatial blocks of ~%d regions, %d per batch (%d batches per epoch), "
                 "losses on %d seeds per batch, halo %s; cross-block edges per type: %s", p.num_parts,
                 math.ceil(n / p.num_parts), p.parts_per_batch, math.ceil(p.num_parts / p.parts_per_batch),
                 loss_nodes, list(bc.hops) or "none",
                 ", ".join(f"{k} {v:.0%}" for k, v in edge_cut(data, p.part).items()))
    # Streams: the batch permutation is shared by all ranks; sampling, dropout and augmentations
    # are per rank (rank 0's torch streams are a single-process run's).
    perm_rng = np.random.default_rng([tc.seed, 0])
    gen = torch.Generator(device=device)

    def seed_rank_streams(*key: int) -> np.random.Generator:
        if key or ranks.rank:
            torch_seed = _rank_seed(tc.seed, ranks.rank, *key)
            torch.manual_seed(torch_seed)
            gen.manual_seed(torch_seed)
        else:  # rank 0 of a fresh run: the streams of a single-process run
            gen.manual_seed(tc.seed)
        return np.random.default_rng([tc.seed, 1, ranks.rank, *key])

    sample_rng = seed_rank_streams()
    history: list[dict[str, float]] = []
    start, stopping, saved_epoch = 0, EarlyStopping(), 0
    found = _read_checkpoint(run_dir, mc, tc, bc, metadata, n, ranks) if resume and run_dir is not None else None
    if found is not None:
        ckpt_path, ckpt = found
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        history = [dict(r) for r in ckpt["history"]]
        start, stopping = int(ckpt["epoch"]), EarlyStopping.from_checkpoint(ckpt)
        saved_epoch = start
        _set_rng_state(perm_rng, ckpt["perm_rng"])
        saved = ckpt["rank_states"]
        if len(saved) == ranks.world_size:
            mine = saved[ranks.rank]
            torch.set_rng_state(mine["rng_cpu"])
            if device.type == "cuda" and mine.get("rng_cuda") is not None:
                torch.cuda.set_rng_state(mine["rng_cuda"], device)
            gen.set_state(mine["rng_gen"].to(gen.get_state().device))
            _set_rng_state(sample_rng, mine["sampler_rng"])
        else:
            sample_rng = seed_rank_streams(start)
            if ranks.is_main:
                log.warning("checkpoint %s was written by %d processes, this run has %d: weights and optimiser "
                            "are restored, the per-rank RNG streams re-seeded (the run will not repeat the "
                            "original one exactly)", ckpt_path, len(saved), ranks.world_size)
        if ranks.is_main:
            log.info("resuming from %s (epoch %d)", ckpt_path, start)
    elif resume and ranks.is_main:
        log.info("no checkpoint in %s: starting from scratch", run_dir)
    writes = run_dir if ranks.is_main else None
    loss_log = LossLog(writes, history)
    sync = GradientAverager(ranks) if ranks.distributed else None

    def checkpoint(epoch: int) -> None:  # collective: every rank calls it, rank 0 writes
        nonlocal saved_epoch
        saved_epoch = epoch
        mine = {"rng_cpu": torch.get_rng_state(), "rng_gen": gen.get_state().cpu(),
                "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                "sampler_rng": _rng_state(sample_rng)}
        rank_states = all_gather(mine, ranks)
        if writes is None:
            return
        state = checkpoint_state(epoch, mc, tc, metadata, n, model, opt, history, stopping)
        state.update(minibatch_config=json.dumps(_minibatch_identity(bc)), world_size=ranks.world_size,
                     perm_rng=_rng_state(perm_rng), rank_states=rank_states)
        save_checkpoint(writes, state, tc.keep_checkpoints)

    bar = start_progress("training (mini-batch)", tc.epochs - start) if ranks.is_main else None
    progress = ProgressLog(tc.epochs, start, tc.log_every, log)
    for epoch in range(start + 1, tc.epochs + 1):
        if stopping.stopped:
            break
        model.train()
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        batches = _share_batches(sampler.epoch_batches(perm_rng), ranks)
        for b, seeds in enumerate(batches):
            sub = sampler.batch(data, seeds, sample_rng, loss_nodes)[0].to(device)
            total, parts = optimisation_step(model, sub, opt, gen, tc, device, f"epoch {epoch}, batch {b}"
                                             + (f" of rank {ranks.rank}" if ranks.distributed else ""), sync)
            for k, v in {"total": total.detach(), **parts}.items():
                sums[k] = sums.get(k, 0.0) + float(v)
                counts[k] = counts.get(k, 0) + 1
        every = all_gather((sums, counts), ranks)
        row: dict[str, float] = {"epoch": epoch}
        for k in ("total", *sorted({k for s, _ in every for k in s} - {"total"})):
            row[k] = sum(s.get(k, 0.0) for s, _ in every) / sum(c.get(k, 0) for _, c in every)
        history.append(row)
        loss_log.append(row)
        if bar is not None:
            bar.update(1, loss=f"{row['total']:.4f}")
        stopping.update(row["total"], tc, epoch)
        if ranks.is_main:
            progress.epoch_done(epoch, row["total"], {}, final=epoch == tc.epochs or stopping.stopped,
                                note=f"({len(batches)} batches x {ranks.world_size} ranks)")
        if run_dir is not None and tc.checkpoint_every and epoch % tc.checkpoint_every == 0:
            checkpoint(epoch)
    if bar is not None:
        bar.close()
    last = int(history[-1]["epoch"]) if history else 0
    if run_dir is not None and last and last != saved_epoch:  # decided alike on every rank, not from files
        checkpoint(last)

    emb, weights = embed_minibatch(model, data, bc, device, tc.amp)  # as transform() will embed
    result = TrainResult(model=model, embeddings=emb, fusion_weights=weights, modalities=model.modalities,
                         region_ids=list(getattr(data, "region_ids", range(n))), history=history,
                         epochs_run=last, stopped_early=stopping.stopped, run_dir=run_dir,
                         columns=model.written_columns(data))
    if writes is not None:
        write_run_outputs(result, writes, tc)
    return result


def _read_checkpoint(run_dir: Path, mc: ModelConfig, tc: TrainConfig, bc: MiniBatchConfig,
                     metadata: GraphMetadata, num_regions: int, ranks: Ranks) -> tuple[Path, dict[str, Any]] | None:
    """Rank 0 reads and checks the newest checkpoint and hands it (or its error) to every rank."""
    payload: tuple[str, Any] = ("none", None)
    if ranks.is_main:
        try:
            found = read_checkpoint(run_dir, mc, tc, metadata, num_regions)
            if found is not None:
                path, ckpt = found
                if "rank_states" not in ckpt:
                    raise ConfigError(f"cannot resume from {path}: it was written by full-graph training; "
                                      "resume with train.mode=full or start a new run_dir")
                saved = json.loads(ckpt["minibatch_config"])
                changed = {k: f"{saved.get(k)!r} -> {v!r}" for k, v in _minibatch_identity(bc).items()
                           if saved.get(k) != v}
                if changed:
                    raise ConfigError(f"cannot resume from {path}: MiniBatchConfig fields changed {changed}; "
                                      "only inference settings may change on resume")
                payload = ("ok", found)
        except UrbanRepError as exc:
            payload = ("error", exc)
    payload = broadcast(payload, ranks)
    if payload[0] == "error":
        raise payload[1]
    return payload[1] if payload[0] == "ok" else None


@torch.no_grad()
def embed_minibatch(model: RegionModel, data: HeteroData, config: MiniBatchConfig | None = None,
                    device: torch.device | None = None, amp: bool = False,
                    rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings ``[N, C]`` and fusion weights ``[N, M]`` (float32) of every region of ``data``.

    Args:
        model: A trained model.
        data: A region graph.
        config: ``inference="full"``: one exact full-graph pass; ``"sampled"``: batches of
            ``inference_batch_size`` seed regions, each over its sampled subgraph (seed rows kept).
        device: Where to run (default: the model's device).
        amp: bf16 autocast on CUDA.
        rng: Neighbour sampling of ``"sampled"`` inference (default: seeded with
            :data:`INFERENCE_SEED`, so the same model and graph always give the same embedding).
    """
    bc = config or MiniBatchConfig()
    device = device or next(model.parameters()).device
    model.eval()
    if bc.inference == "full":
        g = data if device.type == "cpu" else data.clone().to(device)
        with _amp_context(device, amp):
            out = model(g)
        return (model.final_embedding(out.embedding.float().cpu().numpy().astype(np.float32), data),
                out.fusion_weights.float().cpu().numpy().astype(np.float32))
    rng = rng or np.random.default_rng(INFERENCE_SEED)
    prepared = with_flow_profile(data, flow_inputs_for(model.config, data))  # the city's, not each batch's
    sampler = BatchSampler(prepared, bc)
    emb = np.zeros((sampler.n, model.out_channels), np.float32)
    weights = np.zeros((sampler.n, len(model.modalities)), np.float32)
    for seeds in sampler.inference_batches():
        sub, nodes = sampler.batch(prepared, seeds, rng)
        with _amp_context(device, amp):
            out = model(sub.to(device))
        rows = np.searchsorted(nodes, seeds)
        emb[seeds] = out.embedding.float().cpu().numpy()[rows]
        weights[seeds] = out.fusion_weights.float().cpu().numpy()[rows]
    return model.final_embedding(emb, data), weights


def epochs_for_steps(num_regions: int, batch_size: int, steps: int) -> int:
    """Epochs giving about ``steps`` optimiser steps (helper for benchmarks)."""
    return max(1, math.ceil(steps / max(1, math.ceil(num_regions / batch_size))))
