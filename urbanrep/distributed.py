"""Data-parallel training over ``torch.distributed`` ranks (mini-batch mode only).

Each rank trains the same :class:`~urbanrep.network.RegionModel` (same initial weights: every
rank seeds its parameter init alike) on its own share of an epoch's seed batches; after every
``backward`` the gradients are averaged over the ranks (:class:`GradientAverager`, one
``all_reduce`` of a flat buffer), so every rank clips and steps alike and the parameters stay
identical. Rank 0 alone writes checkpoints, ``loss.csv``, embeddings and ``model.pt``.

Launch, with a graph written by ``urbanrep build-graphs`` (one process per GPU; on CPU the
processes use the ``gloo`` backend, on CUDA ``nccl``)::

    # a single machine, the processes spawned by urbanrep itself
    urbanrep train graph.pt --out runs/big --set train.mode=minibatch --nproc 4
    urbanrep run my_city --set train.mode=minibatch --nproc 4

    # torchrun (also across machines; run_dir must then be on a shared file system)
    torchrun --nproc_per_node=4 -m urbanrep train graph.pt --out runs/big --set train.mode=minibatch

From Python, :func:`urbanrep.minibatch.train_minibatch` joins the process group that torchrun
describes in the environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...), or uses one the
caller has already initialised; :func:`spawn` starts local processes for a function.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from urbanrep.errors import ConfigError, UrbanRepError

log = logging.getLogger(__name__)

__all__ = ["GradientAverager", "Ranks", "all_gather", "backend_for", "broadcast", "current_ranks",
           "env_world_size", "process_group", "rank_device", "spawn"]


@dataclass(frozen=True)
class Ranks:
    """Where this process stands in the data-parallel job.

    Attributes:
        rank: This process's rank (0 in a single-process run).
        world_size: Number of processes (1 in a single-process run).
    """

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one process."""
        return self.world_size > 1


def _initialised() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def current_ranks() -> Ranks:
    """Rank and world size of the initialised default process group (``Ranks()`` when none)."""
    if not _initialised():
        return Ranks()
    return Ranks(torch.distributed.get_rank(), torch.distributed.get_world_size())


def env_world_size() -> int:
    """``WORLD_SIZE`` as torchrun (or :func:`spawn`) sets it; 1 when unset."""
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigError(f"environment variable WORLD_SIZE={raw!r} is not an integer; launch with "
                          "torchrun --nproc_per_node=N or unset it") from exc


def backend_for(device: torch.device) -> str:
    """``"nccl"`` for CUDA devices, ``"gloo"`` otherwise."""
    return "nccl" if device.type == "cuda" else "gloo"


def rank_device(device: torch.device) -> torch.device:
    """The device of this rank: ``cuda`` without an index becomes ``cuda:LOCAL_RANK``."""
    if device.type == "cuda" and device.index is None and (_initialised() or env_world_size() > 1):
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[Ranks]:
    """Be part of the process group the environment describes, for the duration of the block.

    An already initialised default group is used as it is (and left open). Otherwise, when
    ``WORLD_SIZE`` > 1 (torchrun, :func:`spawn`), the group is initialised from the
    environment with the backend that fits ``device`` and destroyed at the end of the block.
    With neither, the block runs as a single process (``Ranks(0, 1)``).

    Args:
        device: The training device (chooses ``nccl`` for CUDA, ``gloo`` for CPU).

    Raises:
        ConfigError: ``torch.distributed`` is unavailable, or the environment is incomplete.
    """
    if _initialised():
        yield current_ranks()
        return
    if env_world_size() <= 1:
        yield Ranks()
        return
    if not torch.distributed.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed; "
                          "run a single process (unset WORLD_SIZE)")
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ConfigError(f"WORLD_SIZE is set but {', '.join(missing)} is not; launch with "
                          "'torchrun --nproc_per_node=N -m urbanrep train ...' or use --nproc N")
    dev = rank_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = backend_for(dev)
    torch.distributed.init_process_group(backend)
    ranks = current_ranks()
    log.info("rank %d of %d joined the process group (%s on %s)", ranks.rank, ranks.world_size, backend, dev)
    try:
        yield ranks
    finally:
        torch.distributed.destroy_process_group()


def all_gather(obj: Any, ranks: Ranks) -> list[Any]:
    """Every rank's ``obj`` (a picklable object), in rank order, on every rank."""
    if not ranks.distributed:
        return [obj]
    out: list[Any] = [None] * ranks.world_size
    torch.distributed.all_gather_object(out, obj)
    return out


def broadcast(obj: Any, ranks: Ranks) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not ranks.distributed:
        return obj
    box = [obj if ranks.is_main else None]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


class GradientAverager:
    """Average the gradients of every rank (a :data:`urbanrep.train.GradientSync`).

    One ``all_reduce`` per step of a flat float32 buffer holding every trainable parameter's
    gradient (zeros where this rank's batch did not use the parameter), one "used" flag per
    parameter and the local loss. Afterwards each gradient is the sum over ranks divided by the
    world size (what DistributedDataParallel computes); a parameter no rank used keeps
    ``grad=None``, so the optimiser skips it exactly as a single process would. Parameters used
    only outside ``forward`` (contrastive heads in :meth:`RegionModel.loss`) need no special
    care, unlike with DistributedDataParallel's autograd hooks.

    Args:
        ranks: The process group's ranks.
    """

    def __init__(self, ranks: Ranks) -> None:
        self.ranks = ranks

    def __call__(self, model: torch.nn.Module, loss: Tensor) -> Tensor:
        """Average gradients in place; returns the loss averaged over ranks (a 0-dim tensor)."""
        params = [p for p in model.parameters() if p.requires_grad]
        if not self.ranks.distributed:
            return loss
        device = params[0].device if params else loss.device
        chunks = [(p.grad.detach().float() if p.grad is not None else torch.zeros(p.shape, device=device)).reshape(-1)
                  for p in params]
        used = torch.tensor([float(p.grad is not None) for p in params], device=device)
        flat = torch.cat([*chunks, used, loss.detach().float().reshape(1).to(device)])
        torch.distributed.all_reduce(flat)
        offset = 0
        n_grads = sum(c.numel() for c in chunks)
        used_by = flat[n_grads:n_grads + len(params)]
        for i, p in enumerate(params):
            size = p.numel()
            if used_by[i] > 0:
                p.grad = (flat[offset:offset + size] / self.ranks.world_size).view_as(p).to(p.dtype)
            else:
                p.grad = None
            offset += size
        return flat[-1] / self.ranks.world_size


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawned(local_rank: int, fn: Callable[..., Any], nproc: int, port: int, args: tuple[Any, ...]) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(nproc),
                       "RANK": str(local_rank), "LOCAL_RANK": str(local_rank),
                       "LOCAL_WORLD_SIZE": str(nproc)})
    fn(*args)


def spawn(fn: Callable[..., Any], nproc: int, args: tuple[Any, ...] = ()) -> None:
    """Run ``fn(*args)`` in ``nproc`` fresh local processes that form one process group.

    Each process gets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
    ``MASTER_PORT`` (a free local port) in its environment, as torchrun would set them, so
    :func:`process_group` (entered by :func:`urbanrep.minibatch.train_minibatch`) joins them.
    ``fn`` must be importable (a module-level function) and ``args`` picklable.

    Args:
        fn: The function every process runs.
        nproc: Number of processes (>= 1).
        args: Its positional arguments.

    Raises:
        ConfigError: ``nproc`` < 1.
        UrbanRepError: a process failed (the message carries its error).
    """
    if nproc < 1:
        raise ConfigError(f"nproc must be >= 1, got {nproc}")
    import torch.multiprocessing as mp

    try:
        mp.start_processes(_spawned, args=(fn, nproc, _free_port(), args), nprocs=nproc, join=True,
                           start_method="spawn")
    except mp.ProcessRaisedException as exc:
        lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
        raise UrbanRepError(f"a training process failed: {lines[-1] if lines else exc}") from exc
    except mp.ProcessExitedException as exc:
        raise UrbanRepError(f"a training process died ({exc}); rerun with --nproc 1 to see its error") from exc
